"""Spec: bad input gets a 400 in OpenAI's error shape saying what is wrong, before any model work, and disturbs
nothing: a reply streaming meanwhile is unchanged, no slot stays taken, the next good request is answered."""

import threading

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from cobra_app.api.image_urls import image_data_url
from cobra_app.bench.api import Recording
from tests.api.support import assistant, served, user

MODEL = "tiny-cobra"
CONTEXT = 120  # the backend's context limit here (text tokens)
CAPS = {"max_image_bytes": 6000, "max_image_pixels": 10_000}


@pytest.fixture(scope="module")
def server(cobra, make_backend):
    backend = Recording(make_backend(cobra, max_context_tokens=CONTEXT))
    with served(cobra, backend, **CAPS) as (url, app):
        yield url, backend, app


def noisy_image(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8))


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def body(messages, **fields) -> dict:
    return {"model": MODEL, "messages": messages, **fields}


def small_image() -> str:
    return image_data_url(noisy_image(8, 8))


BAD_BODIES = {
    "malformed JSON": (b'{"model": "tiny-cobra", "messages": [', None, "invalid_json"),
    "a JSON array": (b"[1, 2]", None, "invalid_json"),
    "NaN": (b'{"model": "tiny-cobra", "messages": [{"role": "user", "content": "Hi"}], "temperature": NaN}',
            "temperature", "invalid_value"),
    "an unknown argument": (body([user("Hi")], best_of=2), "best_of", "unknown_parameter"),
    "no messages": ({"model": MODEL}, "messages", "missing_required_parameter"),
    "empty message list": (body([]), "messages", "invalid_value"),
    "a wrong type": (body([user("Hi")], temperature="hot"), "temperature", "invalid_value"),
    "an out-of-range value": (body([user("Hi")], top_p=1.5), "top_p", "invalid_value"),
    "an unknown role": (body([{"role": "robot", "content": "Hi"}]), "messages[0].role", "invalid_value"),
    "a tool message": (body([{"role": "tool", "content": "4", "tool_call_id": "c"}, user("Hi")]), "messages[0]",
                       "unsupported_value"),
    "a system prompt": (body([{"role": "system", "content": "Be terse."}, user("Hi")]), "messages[0]",
                        "unsupported_value"),
    "an empty user message": (body([user("  ")]), "messages[0].content", "empty_message"),
    "an image without text": (body([{"role": "user", "content": [image_part(small_image())]}]),
                              "messages[0].content", "empty_message"),
    "two user messages in a row": (body([user("Hi"), user("Hi")]), "messages", "invalid_value"),
    "an audio part": (body([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]),
                      "messages[0].content[0]", "invalid_value"),
    "an image in a later message": (body([user("Hi"), assistant("Yes."), user("And?", small_image())]),
                                    "messages[2].content[0]", "unsupported_value"),
    "two images": (body([{"role": "user", "content": [image_part(small_image()), image_part(small_image()),
                                                      {"type": "text", "text": "Compare."}]}]),
                   "messages[0].content[1]", "unsupported_value"),
    "a data URL that is not an image": (body([user("Hi", "data:text/plain;base64,aGVsbG8=")]),
                                        "messages[0].content[0].image_url", "invalid_image"),
    "a damaged image": (body([user("Hi", "data:image/png;base64," + small_image()[40:])]),
                        "messages[0].content[0].image_url", "invalid_image"),
    "an image over the byte cap": (body([user("Hi", image_data_url(noisy_image(60, 60)))]),
                                   "messages[0].content[0].image_url", "invalid_image"),
    "an image over the pixel cap": (body([user("Hi", image_data_url(Image.new("1", (200, 100))))]),
                                    "messages[0].content[0].image_url", "invalid_image"),
    "an http image URL": (body([user("Hi", "http://127.0.0.1:9/a.png")]), "messages[0].content[0].image_url",
                          "invalid_image"),
    "a body over the size limit": (body([user("word " * 500_000)]), None, "request_too_large"),
    "a conversation over the context": (body([user("word " * 200)]), "messages", "context_length_exceeded"),
    "n=2": (body([user("Hi")], n=2), "n", "unsupported_value"),
    "tools": (body([user("Hi")], tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]), "tools",
              "unsupported_parameter"),
    "JSON mode": (body([user("Hi")], response_format={"type": "json_object"}), "response_format",
                  "unsupported_parameter"),
    "too many new tokens": (body([user("Hi")], max_tokens=65), "max_tokens", "invalid_value"),
}


@pytest.mark.parametrize("name", BAD_BODIES)
def test_bad_input_is_a_400_in_openai_s_shape(server, name):
    url, backend, app = server
    payload, param, code = BAD_BODIES[name]
    started = len(backend.replies)
    if isinstance(payload, bytes):
        response = httpx.post(f"{url}/chat/completions", content=payload, timeout=60,
                              headers={"Content-Type": "application/json"})
    else:
        response = httpx.post(f"{url}/chat/completions", json=payload, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code)
    assert error["message"] and "Traceback" not in error["message"]
    assert len(backend.replies) == started  # refused before any reply was started
    assert app.state.slots.in_use == 0


def test_what_the_client_sees_is_a_bad_request_error_with_the_reason(server):
    client = openai.OpenAI(base_url=server[0], api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[user("Hi"), assistant("Yes."), user("And?",
                                                                                                   small_image())])
    assert "Cobra reads one image, before all of the conversation's text" in info.value.message
    assert info.value.code == "unsupported_value" and info.value.param == "messages[2].content[0]"


def test_bad_input_disturbs_nothing(server, cobra):
    url, _, app = server
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    messages = [user("What is in the image?", small_image())]
    alone = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=40).choices[0].message.content
    streamed, go = [], threading.Event()

    def stream():
        for chunk in client.chat.completions.create(model=MODEL, messages=messages, max_tokens=40, stream=True):
            streamed.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
            go.set()

    worker = threading.Thread(target=stream)
    worker.start()
    go.wait(30)
    for payload, _, _ in BAD_BODIES.values():  # while that reply streams
        if isinstance(payload, dict):
            assert httpx.post(f"{url}/chat/completions", json=payload, timeout=60).status_code == 400
    worker.join(60)
    assert "".join(streamed) == alone
    assert app.state.slots.in_use == 0
    again = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=40).choices[0].message.content
    assert again == alone


def test_unknown_paths_and_methods_answer_in_openai_s_shape(server):
    url = server[0]
    missing = httpx.post(f"{url}/completions", json={})
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "Unknown request URL: POST /v1/completions."
    wrong = httpx.get(f"{url}/chat/completions")
    assert wrong.status_code == 405 and set(wrong.json()["error"]) == {"message", "type", "param", "code"}
