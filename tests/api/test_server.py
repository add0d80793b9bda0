"""Spec: the server's slots and failures - a client that disconnects (mid-stream, or while waiting for a whole reply)
has its reply stopped and its slot freed at once, with stored state left consistent; a full queue answers 503; model
errors answer 500 in OpenAI's shape (as the last event of a stream that already started), a backend that cannot answer
now (`BackendUnavailable`, e.g. every replica lost) 503 with Retry-After."""

import threading
import time

import httpx
import openai
import pytest

from cobra_app.api.backend import BackendUnavailable
from cobra_app.api.reference import ReferenceBackend
from cobra_app.bench.api import Recording
from cobra_app.generation import SamplingParams
from tests.api.support import Slow, served, user, wait_for

MODEL = "tiny-cobra"
SLOW = 0.05  # seconds per token: replies long enough to leave in the middle
REQUEST = {"model": MODEL, "messages": [user("What is in the image?")], "max_tokens": 64, "temperature": 1.0,
           "seed": 3}  # sampled with a seed: no early end of text, and reproducible


@pytest.fixture
def slow(cobra, make_backend):
    """One slot, slow tokens: (url, recording backend, app, the backend under test)."""
    inner = make_backend(cobra)
    backend = Recording(Slow(inner, SLOW))
    with served(cobra, backend, concurrency=1, queue_size=1) as (url, app):
        yield url, backend, app, inner


def reference_text(cobra) -> str:
    params = SamplingParams(max_new_tokens=64, greedy=False, temperature=1.0, seed=3)
    reply = ReferenceBackend(cobra).complete(None, [("user", "What is in the image?")], params)
    list(reply.events())
    return reply.text.strip()


def assert_nothing_in_flight(inner) -> None:
    if hasattr(inner, "stats"):  # the session manager: no reply left running
        assert inner.stats()["replies_in_flight"] == 0


def test_a_client_gone_mid_stream_frees_its_slot_and_stops_its_reply(slow, cobra):
    url, backend, app, inner = slow
    with httpx.stream("POST", f"{url}/chat/completions", json={**REQUEST, "stream": True}, timeout=30) as response:
        content = 0
        for line in response.iter_lines():  # leave after the third piece of content
            content += line.startswith("data: ") and '"content":"' in line
            if content == 3:
                break
    assert wait_for(lambda: app.state.slots.in_use == 0, timeout_s=2)  # well before the 64 tokens' 3.2 s
    assert wait_for(lambda: backend.replies[0].stats is not None)
    stats = backend.replies[0].stats
    assert stats.finish_reason == "stopped" and stats.new_tokens < 64
    assert_nothing_in_flight(inner)
    again = httpx.post(f"{url}/chat/completions", json=REQUEST, timeout=60).json()
    assert again["choices"][0]["message"]["content"] == reference_text(cobra)  # state after the cut is consistent


def test_a_client_gone_while_waiting_for_a_whole_reply_frees_its_slot(slow, cobra):
    url, backend, app, inner = slow
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/chat/completions", json=REQUEST, timeout=0.5)
    assert wait_for(lambda: app.state.slots.in_use == 0, timeout_s=2)  # before the 64 tokens' 3.2 s
    assert backend.replies[0].stats.finish_reason == "stopped" and backend.replies[0].stats.new_tokens < 64
    assert_nothing_in_flight(inner)
    again = httpx.post(f"{url}/chat/completions", json=REQUEST, timeout=60).json()
    assert again["choices"][0]["message"]["content"] == reference_text(cobra)


def test_a_full_queue_answers_503_and_the_queue_drains(slow):
    url, _, app, _ = slow
    results = []
    workers = [threading.Thread(target=lambda: results.append(
        httpx.post(f"{url}/chat/completions", json=REQUEST, timeout=60).status_code)) for _ in range(2)]
    workers[0].start()
    assert wait_for(lambda: app.state.slots.in_use == 1)
    workers[1].start()
    assert wait_for(lambda: app.state.slots.waiting == 1)
    busy = httpx.post(f"{url}/chat/completions", json=REQUEST, timeout=60)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert busy.json()["error"]["code"] == "queue_full" and busy.json()["error"]["type"] == "server_error"
    for worker in workers:
        worker.join(60)
    assert results == [200, 200] and app.state.slots.in_use == 0


class Failing:
    """A backend whose replies raise `error` after `after` tokens (or whose start does when `after` is None)."""

    def __init__(self, backend, after: int | None, error: Exception | None = None):
        self.backend, self.after = backend, after
        self.error = error or RuntimeError("the model is on fire")
        self.replies = []

    def complete(self, image, messages, params=None, *, top_logprobs=None):
        if self.after is None:
            raise self.error
        reply = self.backend.complete(image, messages, params, top_logprobs=top_logprobs)
        self.replies.append(reply)
        outer = self

        class Reply:
            stats = property(lambda _: reply.stats)
            close = reply.close

            def events(self):
                for i, event in enumerate(reply.events()):
                    if i == outer.after:
                        raise outer.error
                    yield event

        return Reply()


@pytest.mark.parametrize("after", [None, 2])
def test_model_errors_answer_500_and_free_the_slot(cobra, after, caplog):
    backend = Failing(ReferenceBackend(cobra), after)
    with served(cobra, backend) as (url, app):
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(**REQUEST)
        assert info.value.body["type"] == "server_error" and "a model error" in info.value.body["message"]
        assert "on fire" not in info.value.body["message"]  # the operator's log has it, not the client
        if after is not None:
            with pytest.raises(openai.APIError, match="a model error"):
                for _ in client.chat.completions.create(**REQUEST, stream=True):
                    pass
            assert wait_for(lambda: all(r.stats is not None for r in backend.replies))  # closed after the last event
            assert all(r.stats.finish_reason == "stopped" for r in backend.replies)
        assert wait_for(lambda: app.state.slots.in_use == 0)
    assert "on fire" in caplog.text


class Lost(BackendUnavailable):
    user_message = "The model server lost a replica. Please try again in a moment."


@pytest.mark.parametrize("after", [None, 2])
def test_an_unavailable_backend_answers_503_with_retry_after_and_frees_the_slot(cobra, after):
    backend = Failing(ReferenceBackend(cobra), after, Lost("replica 2 died"))
    with served(cobra, backend) as (url, app):
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        response = httpx.post(f"{url}/chat/completions", json=REQUEST, timeout=60)
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["error"] == {"message": Lost.user_message, "type": "server_error", "param": None,
                                             "code": "unavailable"}
        if after is not None:
            with pytest.raises(openai.APIError, match="lost a replica") as info:
                for _ in client.chat.completions.create(**REQUEST, stream=True):
                    pass
            assert info.value.body["code"] == "unavailable" and "died" not in info.value.body["message"]
        assert wait_for(lambda: app.state.slots.in_use == 0)


def test_replies_run_off_the_event_loop(cobra):
    """While one reply decodes slowly, the server answers other requests at once."""
    backend = Recording(Slow(ReferenceBackend(cobra), SLOW))
    with served(cobra, backend) as (url, _):
        worker = threading.Thread(target=lambda: httpx.post(f"{url}/chat/completions", json=REQUEST, timeout=60))
        worker.start()
        assert wait_for(lambda: backend.replies)
        t0 = time.perf_counter()
        assert httpx.get(f"{url}/models", timeout=10).status_code == 200
        assert time.perf_counter() - t0 < 1.0
        worker.join(60)
