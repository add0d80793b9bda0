"""Spec: the app's settings, model choice with its offline fallback, examples and probe-suite uploads."""

import ctypes
import io
import json
import os
import subprocess
import sys
import zipfile

import pytest
from PIL import Image

from cobra_app.loading import ModelUnavailableError
from cobra_app.serving.config import AppConfig, parse_bytes, parse_config
from cobra_app.ui.examples import Suggestions, load_examples
from cobra_app.ui.params import ParamValues
from cobra_app.serving.model_choice import choose_model
from cobra_app.ui.probe_suite import SuiteUploadError, run_uploaded_suite, stage_suite
from tests.ui.support import EXAMPLES


# --- settings -------------------------------------------------------------------------------------------------------
def test_flags_override_environment_which_overrides_defaults():
    assert parse_config([], {}) == AppConfig()
    env = {"COBRA_MODEL": "assets/demo-model", "COBRA_PORT": "8000", "COBRA_SHARE": "true",
           "COBRA_MEMORY_BUDGET": "512MiB", "COBRA_CONCURRENCY": "4", "COBRA_DEVICE": "cpu", "COBRA_DTYPE": "float32"}
    cfg = parse_config([], env)
    assert (cfg.model, cfg.port, cfg.share, cfg.memory_budget, cfg.concurrency) == (
        "assets/demo-model", 8000, True, 512 * 2**20, 4)
    assert (cfg.device, cfg.dtype, cfg.host) == ("cpu", "float32", "127.0.0.1")
    cfg = parse_config(["--model", "x/y", "--port", "9000", "--host", "0.0.0.0", "--memory-budget", "1GB",
                        "--concurrency", "1", "--share"], env)
    assert (cfg.model, cfg.port, cfg.host, cfg.memory_budget, cfg.concurrency) == ("x/y", 9000, "0.0.0.0", 10**9, 1)


def test_spaces_server_variables_are_honoured():
    cfg = parse_config([], {"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "7861"})
    assert (cfg.host, cfg.port) == ("0.0.0.0", 7861)


def test_bad_settings_exit_with_a_message(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--memory-budget", "lots"], {})
    assert "not a size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config([], {"COBRA_CONCURRENCY": "0"})
    assert parse_bytes("1.5 GB") == 1_500_000_000 and parse_bytes("2kib") == 2048


# --- process --------------------------------------------------------------------------------------------------------
ARENA_PROBE = """
import ctypes, sys, threading
from cobra_app.serving.malloc import limit_malloc_arenas
if sys.argv[1] == "cap":
    assert limit_malloc_arenas()
barrier = threading.Barrier(8)
def work():  # eight threads allocating at the same time, as the app's workers running the model do
    keep = [bytearray(50_000) for _ in range(20)]
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
ctypes.CDLL(None).malloc_stats()  # one "Arena N:" block per malloc arena, on stderr
"""


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "malloc_stats"), reason="not glibc")
def test_the_app_caps_malloc_arenas_so_worker_threads_share_freed_memory():
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}

    def arenas(mode: str) -> int:
        run = subprocess.run([sys.executable, "-c", ARENA_PROBE, mode], env=env, capture_output=True, text=True,
                             check=True)
        return sum(line.startswith("Arena ") for line in run.stderr.splitlines())

    assert arenas("default") > 2  # glibc: a new arena per thread (up to 8 per core)
    assert arenas("cap") == 2


def test_the_api_s_key_and_image_url_switch():
    assert (AppConfig().api_key, AppConfig().allow_image_urls) == (None, False)
    cfg = parse_config(["--allow-image-urls"], {"COBRA_API_KEY": "s3cret"})
    assert cfg.api_key == "s3cret" and cfg.allow_image_urls and "s3cret" not in repr(cfg)  # never in a log line
    assert parse_config(["--api-key", "flag"], {"COBRA_API_KEY": "env"}).api_key == "flag"
    assert parse_config([], {"COBRA_ALLOW_IMAGE_URLS": "true"}).allow_image_urls


def test_the_app_caps_the_arenas_before_it_builds_anything(monkeypatch, tmp_path):
    import app
    import cobra_app.serving.malloc

    calls = []

    def build(cfg):
        calls.append("build")
        raise ModelUnavailableError("no model here")

    monkeypatch.setattr(cobra_app.serving.malloc, "limit_malloc_arenas", lambda: calls.append("cap"))
    monkeypatch.setattr(app, "build", build)
    assert app.main(["--model", str(tmp_path / "missing")]) == 1
    assert calls == ["cap", "build"]


# --- model choice ---------------------------------------------------------------------------------------------------
def test_unavailable_model_falls_back_to_the_demo_model_with_a_banner(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    choice = choose_model("cobra+3b", str(tiny_model_dir), device="cpu")
    assert choice.is_fallback and choice.source == str(tiny_model_dir)
    assert choice.cobra.info()["model_id"] == "tiny-cobra"
    banner = choice.banner()
    assert "Offline demo model" in banner and "`cobra+3b` could not be loaded" in banner
    assert "python app.py --model cobra+3b" in banner  # how to get the real one
    direct = choose_model(str(tiny_model_dir), None, device="cpu")
    assert not direct.is_fallback and direct.banner() == ""


def test_no_fallback_means_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ModelUnavailableError, match="demo model .* is missing"):
        choose_model("cobra+3b", str(tmp_path / "nowhere"))

    def broken(*args, **kwargs):
        raise ValueError("checkpoint is corrupt")

    with pytest.raises(ValueError, match="corrupt"):  # real problems are not hidden behind the demo model
        choose_model(str(tmp_path), str(tmp_path), loader=broken)


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
