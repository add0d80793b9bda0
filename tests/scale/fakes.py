"""A stand-in for a replica's model (the `ChatModel` protocol) for the tests of routing, mobility and retries: no
neural network, but the same contract. States are content-addressed by a hash chain over the image and the
messages; `complete` resumes from the longest stored boundary (memory, then an optional disk directory) and stores
the prompt's and the reply's boundaries; a reply is a deterministic function of the conversation, streamed word by
word (optionally slowly, so a test can kill a replica mid-reply). Also the real served model, slowed."""

from __future__ import annotations

import hashlib
import os
import pickle
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from cobra_app.generation import TokenEvent
from cobra_app.scale.messages import ModelCard, StateFound
from cobra_app.scale.mobility import RequestKeys
from cobra_app.scale.served import ServedModel, build_served_model
from cobra_app.sessions import EmptyMessage, image_key
from tests.api.support import Slow

STATE_ELEMENTS = 73_728  # fp32: 288 KiB, the demo model's state size (the object store carries it, not a pickle)


CRASH = "crash the replica"  # a message that ends the replica's process


def chain(parent: str, role: str, text: str) -> str:
    return hashlib.sha256(f"{parent}\0{role}\0{text}".encode()).hexdigest()


def expected_reply(messages: Sequence[tuple[str, str]]) -> str:
    """What EchoModel answers: the turn number and the last user message's words reversed."""
    turn = sum(role == "user" for role, _ in messages)
    return f"turn {turn}: " + " ".join(reversed(messages[-1][1].split()))


class EchoReply:
    """A ReplyStream: one TokenEvent per word."""

    def __init__(self, text: str, stats: dict, word_delay_s: float):
        self.full, self.stats_when_done, self.word_delay_s = text, stats, word_delay_s
        self.stats, self.closed = None, False

    def events(self):
        for i, word in enumerate(self.full.split(" ")):
            if self.closed:
                return
            time.sleep(self.word_delay_s)
            yield TokenEvent(i, word if i == 0 else " " + word)
        self.stats = self.stats_when_done

    def close(self) -> None:
        self.closed = True


class EchoModel:
    """ChatModel stand-in. `prefilled` counts the messages it had to read (what a rebuild costs)."""

    def __init__(self, disk_dir: str | None = None, word_delay_s: float = 0.0):
        self.memory: dict[str, torch.Tensor] = {}
        self.disk = Path(disk_dir) if disk_dir else None
        self.word_delay_s = word_delay_s
        self.prefilled = 0

    # --- states ---------------------------------------------------------------------------------------------------
    def _chain(self, image, messages) -> list[str]:
        keys = [hashlib.sha256((image_key(image) or "").encode()).hexdigest()]
        for role, text in messages:
            keys.append(chain(keys[-1], role, text))
        return keys

    def boundary_keys(self, image, messages) -> tuple[str, ...]:
        return tuple(reversed(self._chain(image, messages)))

    def request_keys(self, image, messages) -> RequestKeys:
        """The previous turn stored the state after its reply: index 1 (0 is after the new message)."""
        if not messages or messages[-1][0] != "user" or not messages[-1][1].strip():
            raise EmptyMessage("empty message")
        resume = 1 if any(role == "assistant" for role, _ in messages) else None
        return RequestKeys(self.boundary_keys(image, messages), resume)

    def longest_in_memory(self, keys) -> int | None:
        return next((i for i, k in enumerate(keys) if k in self.memory), None)

    def longest_on_disk(self, keys) -> int | None:
        if self.disk is None:
            return None
        return next((i for i, k in enumerate(keys) if (self.disk / k).exists()), None)

    def export(self, keys) -> StateFound | None:
        i = self.longest_in_memory(keys)
        return None if i is None else StateFound(keys[i], self.memory[keys[i]])

    def adopt(self, found: StateFound) -> None:
        self.memory[found.key] = found.state

    def _store(self, key: str) -> None:
        state = torch.full((STATE_ELEMENTS,), float(int(key[:6], 16)))
        self.memory[key] = state
        if self.disk is not None:  # atomically, as the real disk tier writes: a reader never sees half a file
            partial = self.disk / f".{key}.{os.getpid()}.{threading.get_ident()}"
            partial.write_bytes(pickle.dumps(state))
            partial.replace(self.disk / key)

    # --- model ----------------------------------------------------------------------------------------------------
    def complete(self, image, messages, params=None, *, top_logprobs=None) -> EchoReply:
        if not messages or messages[-1][0] != "user" or not messages[-1][1].strip():
            raise EmptyMessage("empty message")
        if messages[-1][1] == CRASH:
            os._exit(1)  # the replica's process dies, as a segfault or an OOM kill would end it
        keys = self.boundary_keys(image, messages)
        found = self.longest_in_memory(keys)
        on_disk = self.longest_on_disk(keys[:found] if found is not None else keys)
        if on_disk is not None:
            self.memory[keys[on_disk]] = pickle.loads((self.disk / keys[on_disk]).read_bytes())
            found = on_disk
        cached = len(keys) - 1 - (found if found is not None else len(keys) - 1)
        self.prefilled += len(messages) - cached
        self._store(keys[0])
        text = expected_reply(messages)
        self._store(chain(keys[0], "assistant", text))
        return EchoReply(text, {"cached_messages": cached, "prompt_messages": len(messages)}, self.word_delay_s)

    def score(self, image, question, answers="yes-no") -> dict[str, float]:
        return {"Yes": 0.5, "No": 0.5}

    def stats(self) -> dict:
        return {"states_in_memory": len(self.memory), "prefilled_messages": self.prefilled}

    def card(self) -> ModelCard:
        return ModelCard("echo", {"model_id": "echo"}, None, "")


def build_echo_model(disk_dir: str | None = None, word_delay_s: float = 0.0):
    """A picklable builder (a replica calls it once)."""
    return lambda: EchoModel(disk_dir, word_delay_s)


class SlowServedModel(ServedModel):
    """The real served model with replies slowed to `delay_s` per token (the same tokens), so that a replica is
    surely mid-reply when a test kills it."""

    def __init__(self, model: ServedModel, delay_s: float):
        super().__init__(model.manager, model.banner)
        self._slow = Slow(model.manager, delay_s)

    def complete(self, image, messages, params=None, *, top_logprobs=None):
        return self._slow.complete(image, messages, params, top_logprobs=top_logprobs)


def build_slow_served_model(cfg, delay_s: float) -> SlowServedModel:
    """For `build_app(cfg, partial(build_slow_served_model, cfg, delay_s))`: called once in each replica."""
    return SlowServedModel(build_served_model(cfg, max(1, int(cfg.num_cpus))), delay_s)
