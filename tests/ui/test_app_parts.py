"""Spec: the app's parts: examples, probe-suite uploads, process start-up and wiring (the settings, the model choice and
the malloc tuning: tests/serving)."""

import io
import json
import time
import zipfile

import pytest
from PIL import Image

from cobra_app.loading import ModelUnavailableError
from cobra_app.serving.config import AppConfig
from cobra_app.ui.examples import Suggestions, load_examples
from cobra_app.ui.params import ParamValues
from cobra_app.ui.probe_suite import SuiteUploadError, run_uploaded_suite, stage_suite
from tests.ui.support import EXAMPLES


# --- examples -------------------------------------------------------------------------------------------------------
def test_examples_are_scenes_with_checked_questions_and_suggestions_follow_the_image(tmp_path):
    examples = load_examples(EXAMPLES)
    assert len(examples) >= 4
    for e in examples:
        assert Image.open(e.image).size == (256, 256)
        answers = [a for _, a in e.questions]
        assert "Yes" in answers and "No" in answers and len(e.questions) >= 5
    copy = tmp_path / "copy.png"  # Gradio hands the handler a copy of the example file
    copy.write_bytes(examples[1].image.read_bytes())
    suggest = Suggestions(examples)
    assert suggest.for_image(copy) == [q for q, _ in examples[1].questions]
    assert suggest.for_image(None) == suggest.generic


# --- probe suite uploads --------------------------------------------------------------------------------------------
def _suite_lines(image="img/a.png"):
    return "\n".join(json.dumps({"image": image, "question": q, "answer": a})
                     for q, a in [("Is there a cat?", "Yes"), ("Is there a dog?", "No")]) + "\n"


def test_suite_upload_as_jsonl_plus_images_or_as_zip_runs_and_reports(tiny_cobra, tmp_path):
    up = tmp_path / "up"
    up.mkdir()
    (up / "suite.jsonl").write_text(_suite_lines())
    Image.new("RGB", (32, 32), "red").save(up / "a.png")
    result = run_uploaded_suite(tiny_cobra, [up / "suite.jsonl", up / "a.png"], tmp_path / "out")
    assert result.report_path.is_file() and "<html" in result.report_html.lower()
    assert "2 cases scored" in result.summary
    archive = tmp_path / "suite.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("s/suite.jsonl", _suite_lines())
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), "blue").save(buffer, "PNG")
        z.writestr("s/img/a.png", buffer.getvalue())
    assert "2 cases scored" in run_uploaded_suite(tiny_cobra, [archive], tmp_path / "out").summary


def test_suite_uploads_cannot_reach_outside_their_folder(tmp_path):
    for image in ("/etc/passwd", "../secret.png", "..\\x.png"):
        (tmp_path / "s.jsonl").write_text(_suite_lines(image))
        work = tmp_path / f"w{abs(hash(image))}"
        work.mkdir()
        with pytest.raises(SuiteUploadError, match="must be relative"):
            stage_suite([tmp_path / "s.jsonl"], work)
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("../evil.jsonl", "{}")
    (tmp_path / "w2").mkdir()
    with pytest.raises(SuiteUploadError, match="unsafe path"):
        stage_suite([archive], tmp_path / "w2")
    with pytest.raises(SuiteUploadError, match="Please upload a probe suite"):
        stage_suite([], tmp_path)
    (tmp_path / "many.jsonl").write_text(_suite_lines() * 3)
    (tmp_path / "w3").mkdir()
    with pytest.raises(SuiteUploadError, match="at most 4"):
        stage_suite([tmp_path / "many.jsonl"], tmp_path / "w3", max_cases=4)


# --- process --------------------------------------------------------------------------------------------------------
def test_the_app_caps_the_arenas_and_hands_freed_memory_back_before_it_builds_anything(monkeypatch, tmp_path):
    import app
    import cobra_app.serving.malloc

    calls = []

    def build(cfg):
        calls.append("build")
        raise ModelUnavailableError("no model here")

    monkeypatch.setattr(cobra_app.serving.malloc, "limit_malloc_arenas", lambda: calls.append("cap"))
    monkeypatch.setattr(cobra_app.serving.malloc, "keep_releasing_free_memory", lambda: calls.append("release"))
    monkeypatch.setattr(app, "build", build)
    assert app.main(["--model", str(tmp_path / "missing")]) == 1
    assert calls == ["cap", "release", "build"]


# --- wiring ---------------------------------------------------------------------------------------------------------
def test_app_wires_model_calls_into_a_shared_bounded_queue_and_names_the_api(tiny_model_dir):
    import app

    demo, api, choice = app.build(AppConfig(model=str(tiny_model_dir), concurrency=3, queue_size=10))
    assert not choice.is_fallback and api.path == "/v1"
    fns = {fn.api_name: fn for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert set(fns) == {"set_image", "chat", "regenerate", "edit", "stop", "undo", "clear", "probe", "model_info",
                        "run_suite"}
    for name in ("set_image", "chat", "regenerate", "edit", "probe", "run_suite"):  # model calls: one shared pool
        assert (fns[name].concurrency_id, fns[name].concurrency_limit) == ("model", 3)
    for name in ("stop", "undo", "clear", "model_info"):  # never wait behind replies
        assert fns[name].concurrency_limit is None
    assert demo._queue.max_size == 10
    endpoints = demo.get_api_info()["named_endpoints"]  # the parameter names API clients call them with (README)
    names = {name: [p["parameter_name"] for p in endpoint["parameters"]] for name, endpoint in endpoints.items()}
    sampling = ParamValues.names()
    assert sampling == ["max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "greedy"]
    assert names["/chat"] == ["image", "message", *sampling] and names["/regenerate"] == sampling
    assert names["/edit"] == ["turn", "message", *sampling] and names["/undo"] == ["message"]
    assert names["/probe"] == ["image", "question"] and names["/set_image"] == ["image"]
    assert names["/stop"] == names["/clear"] == names["/model_info"] == []


@pytest.mark.slow
def test_a_tab_gone_leaves_neither_its_conversation_nor_gradios_record_of_it(tiny_model_dir, png, monkeypatch, caplog):
    """Gradio keeps a copy of the page's settings per session (about 90 kB), closed ones included, for its last
    10,000 sessions: the app drops it with the conversation when the tab (here an API client) goes away."""
    import logging

    from gradio_client import Client, handle_file

    import app
    from cobra_app.serving.ports import free_port

    monkeypatch.setenv("GRADIO_HEARTBEAT_INTERVAL", "0.2")  # the server notices a closed client within 0.2 s
    caplog.set_level(logging.INFO, logger="cobra_app.ui.handlers")
    demo, _, _ = app.build(AppConfig(model=str(tiny_model_dir)))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        client.predict(handle_file(png), "Hello?", max_new_tokens=2, api_name="/chat")
        session = client.session_hash
        assert session in demo.state_holder.session_data
        client.close()
        deadline = time.monotonic() + 30
        while session in demo.state_holder.session_data and time.monotonic() < deadline:
            time.sleep(0.1)
        assert session not in demo.state_holder.session_data
        assert "browser tab gone: its session is closed (0 open; state store " in caplog.text
    finally:
        demo.close()
