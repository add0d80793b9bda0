"""Spec: the public Gradio API, through gradio_client against the launched app (offline, so on the demo model)."""

import pytest
from gradio_client import Client, handle_file

from tests.ui.support import DEMO_MODEL, EXAMPLES, running_app

pytestmark = pytest.mark.slow
GREEDY = {"max_new_tokens": 48, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0,
          "greedy": True}


@pytest.fixture(scope="module")
def app_url(app_model_dir):
    # the default model id, offline: the app must fall back to the demo model (here: the model dir under test)
    with running_app("--model", "cobra+3b", "--fallback-model", str(app_model_dir), "--concurrency", "2") as url:
        yield url


def users(chat):
    return [m["content"] for m in chat if m["role"] == "user"]


def replies(chat):
    return [m["content"] for m in chat if m["role"] == "assistant" and not m.get("metadata")]


def text(content):
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


def test_the_api_lists_the_documented_endpoints(app_url):
    info = Client(app_url, verbose=False).view_api(return_format="dict", print_info=False)
    names = set(info["named_endpoints"])
    assert {"/chat", "/regenerate", "/edit", "/undo", "/clear", "/stop", "/set_image", "/probe",
            "/model_info", "/run_suite"} <= names
    chat_params = [p["parameter_name"] for p in info["named_endpoints"]["/chat"]["parameters"]]
    assert chat_params == ["image", "message", "max_new_tokens", "temperature", "top_p", "top_k",
                           "repetition_penalty", "greedy"]
    assert not any(name.startswith("/on_") or name == "/lambda" for name in names)  # internal events stay private


def test_multi_turn_exchange_regenerate_edit_undo_and_probe(app_url, model_reply):
    client = Client(app_url, verbose=False)
    image = handle_file(str(EXAMPLES / "scene-1.png"))
    params = list(GREEDY.values())
    chat, box = client.predict(image, "Describe the image.", *params, api_name="/chat")
    assert box == "" and [text(u) for u in users(chat)] == ["Describe the image."] and len(replies(chat)) == 1
    speed = [m for m in chat if m.get("metadata")]
    assert len(speed) == 1 and "tokens in context" in speed[0]["metadata"]["title"]
    chat, box = client.predict(image, "How many objects are in the image?", *params, api_name="/chat")
    assert [text(u) for u in users(chat)] == ["Describe the image.", "How many objects are in the image?"]
    assert len(replies(chat)) == 2
    first_reply = text(replies(chat)[0])
    if DEMO_MODEL.is_dir():  # the model's own description (no accuracy target), then the right count of this scene
        assert first_reply == model_reply(EXAMPLES / "scene-1.png", "Describe the image.", GREEDY["max_new_tokens"])
        assert text(replies(chat)[1]) == "Two."

    job = client.submit(image, "Is there a blue diamond in the image?", *params, api_name="/chat")
    streamed = [out for out in job]  # partial outputs as the reply streams
    assert len(streamed) >= 2 and len(users(job.result()[0])) == 3

    chat = client.predict(*params, api_name="/regenerate")
    assert len(users(chat)) == 3 and len(replies(chat)) == 3
    chat = client.predict(1, "How many shapes can you see?", *params, api_name="/edit")
    assert [text(u) for u in users(chat)] == ["Describe the image.", "How many shapes can you see?"]
    assert text(replies(chat)[0]) == first_reply  # the first exchange is untouched
    chat, box = client.predict("", api_name="/undo")
    assert len(users(chat)) == 1 and box == "How many shapes can you see?"

    label, numbers = client.predict(image, "Is there a blue diamond in the image?", api_name="/probe")
    probs = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert set(probs) == {"Yes", "No"} and abs(sum(probs.values()) - 1) < 1e-6
    if DEMO_MODEL.is_dir():
        assert probs["Yes"] > 0.5
    assert numbers.startswith("P(Yes) = ")
    label_nul, numbers_nul = client.predict(image, "Is there a blue\x00 diamond in the image?", api_name="/probe")
    assert (label_nul, numbers_nul) == (label, numbers)  # control characters are removed before the model reads

    assert client.predict(api_name="/clear") == []
    assert "Parameters" in client.predict(api_name="/model_info")


def test_two_clients_have_separate_conversations(app_url):
    a, b = Client(app_url, verbose=False), Client(app_url, verbose=False)
    params = list(GREEDY.values())
    question = "How many objects are in the image?"
    job_a = a.submit(handle_file(str(EXAMPLES / "scene-1.png")), question, *params, api_name="/chat")
    chat_b, _ = b.predict(handle_file(str(EXAMPLES / "scene-2.png")), question, *params, api_name="/chat")
    chat_a, _ = job_a.result()
    assert [text(u) for u in users(chat_a)] == [question] == [text(u) for u in users(chat_b)]
    if DEMO_MODEL.is_dir():  # each answer is about the client's own image (two and three objects)
        assert (text(replies(chat_a)[0]), text(replies(chat_b)[0])) == ("Two.", "Three.")
    chat_a = a.predict(*params, api_name="/regenerate")
    assert [text(u) for u in users(chat_a)] == [question] and len(replies(chat_a)) == 1


def test_the_readme_example_runs(app_url, capsys):
    from tests.ui.support import ROOT

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Gradio API"):]
    code = section[section.index("```python") + len("```python"):]
    code = code[:code.index("```")]
    code = code.replace('Client("http://127.0.0.1:7860/")', f"Client({app_url!r}, verbose=False)")
    code = code.replace('"assets/examples/', f'"{EXAMPLES.as_posix()}/')
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example
    out = capsys.readouterr().out
    assert "user Describe the image." in out and "tokens in context" in out and "P(Yes) = " in out
