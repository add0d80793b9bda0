"""Spec: the API as users launch it - at /v1 of `python app.py` next to the page, whose Gradio API still works (the
key guards /v1 only), and alone with `python -m cobra_app serve`. Both offline, on the demo model (or the tiny one)."""

import base64

import httpx
import openai
import pytest
from gradio_client import Client, handle_file

from tests.ui.support import EXAMPLES, ROOT, running_app

pytestmark = pytest.mark.slow
GREEDY = {"max_new_tokens": 24, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0,
          "greedy": True}
QUESTION = "How many objects are in the image?"


def example_data_url() -> str:
    return "data:image/png;base64," + base64.b64encode((EXAMPLES / "scene-1.png").read_bytes()).decode()


def ask(client: openai.OpenAI, model: str):
    """The question about the example scene -> the whole completion."""
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": example_data_url()}},
                                             {"type": "text", "text": QUESTION}]}]
    return client.chat.completions.create(model=model, messages=messages, max_tokens=GREEDY["max_new_tokens"])


def test_the_page_and_the_api_share_one_port_and_one_store(app_model_dir):
    with running_app("--model", str(app_model_dir), env={"COBRA_API_KEY": "k3y"}) as url:
        page = Client(url, verbose=False)  # the page needs no key
        chat, _ = page.predict(handle_file(str(EXAMPLES / "scene-1.png")), QUESTION, *GREEDY.values(),
                               api_name="/chat")
        replies = [m for m in chat if m["role"] == "assistant" and not m.get("metadata")]
        from_page = "".join(part["text"] for part in replies[0]["content"])

        api = openai.OpenAI(base_url=f"{url}v1", api_key="k3y", max_retries=0)
        (model,) = [m.id for m in api.models.list()]
        answer = ask(api, model)
        assert answer.choices[0].message.content == from_page.strip()  # one model, one prompt: the same reply
        usage = answer.usage  # the page's turn stored the states this request starts from
        assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens
        with pytest.raises(openai.AuthenticationError):
            ask(openai.OpenAI(base_url=f"{url}v1", api_key="nope", max_retries=0), model)
        assert "chatcmpl-" in url.log.read_text()  # the API's requests are logged next to the page's


def readme_example() -> str:
    """The README's `openai` example."""
    section = (ROOT / "README.md").read_text().split("## OpenAI-compatible API", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_serve_runs_the_api_without_the_page_and_the_readme_example_works(app_model_dir, capsys):
    with running_app("--model", str(app_model_dir), entry=("-m", "cobra_app", "serve"),
                     ready_path="v1/models") as url:
        api = openai.OpenAI(base_url=f"{url}v1", api_key="unused", max_retries=0)
        (model,) = [m.id for m in api.models.list()]
        assert ask(api, model).choices[0].message.content
        assert httpx.get(url).status_code == 404  # no page
        example = readme_example()
        assert "http://127.0.0.1:7860/v1" in example
        exec(compile(example.replace("http://127.0.0.1:7860/v1", f"{url}v1"), "README.md", "exec"), {})  # noqa: S102
        assert capsys.readouterr().out.strip()  # the streamed follow-up
