"""Helpers for the API's tests: a served API over any backend, a backend with slow replies, message builders."""

from __future__ import annotations

import contextlib
import time

from cobra_app.api.serve import api_mount, serving_in_thread
from cobra_app.serving.config import AppConfig


@contextlib.contextmanager
def served(cobra, backend, **config):
    """The API over `backend` (settings: AppConfig fields, e.g. concurrency=1, api_key="k") -> (base URL, app)."""
    mount = api_mount(AppConfig(**{"max_new_tokens": 64, **config}), cobra, backend)
    with serving_in_thread(mount) as url:
        yield url, mount.app


class Slow:
    """A backend whose replies take `delay_s` per token (long enough to leave in the middle)."""

    def __init__(self, backend, delay_s: float):
        self.backend, self.delay_s = backend, delay_s

    def complete(self, image, messages, params=None, *, top_logprobs=None):
        return _SlowReply(self.backend.complete(image, messages, params, top_logprobs=top_logprobs), self.delay_s)


class _SlowReply:
    def __init__(self, reply, delay_s: float):
        self.reply, self.delay_s = reply, delay_s

    @property
    def stats(self):
        return self.reply.stats

    def events(self):
        for event in self.reply.events():
            time.sleep(self.delay_s)
            yield event

    def close(self):
        self.reply.close()


def wait_for(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def user(text: str, image_url: str | None = None) -> dict:
    if image_url is None:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                        {"type": "text", "text": text}]}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}
