"""The reference backend: each request is served from scratch, the obviously correct way.

The whole conversation is tokenized as the release builds its prompt (each turn's string of the prompt builder,
tokenized on its own; replies stripped), [image patches] + all of it is read in one prefill, and the reply is decoded.
Nothing is cached, so every turn costs its whole prompt: the store-backed `SessionManager.complete` must give the
same replies at a fraction of the work, and the tests compare the two.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from cobra_app.api.backend import Message
from cobra_app.generation import Decoder, SamplingParams, TextStreamer, TokenEvent
from cobra_app.prompting import clean_message
from cobra_app.sessions import ContextFull, EmptyMessage


@dataclass(frozen=True)
class ReferenceStats:
    prompt_tokens: int
    cached_tokens: int
    new_tokens: int
    finish_reason: str
    processed_tokens: int


def conversation_ids(turns, messages: Sequence[Message]) -> list[int]:
    """The release's prompt ids for `messages` (user, assistant, ..., user) with `turns`, a `TurnTokenizer`."""
    roles = [role for role, _ in messages]
    if not roles or roles != ["user", "assistant"] * (len(roles) // 2) + ["user"]:
        raise ValueError(f"messages must alternate user and assistant, first and last user; got {roles}")
    ids: list[int] = []
    for i, (role, text) in enumerate(messages):
        if role == "user":
            if not clean_message(text):
                raise EmptyMessage(f"message {i} is empty")
            ids += turns.user_turn_ids(text, first=i == 0)
        else:
            ids += turns.assistant_turn_ids(text)
    return ids


class _LockedLM:
    """A model's `step` taken under a lock (one model call at a time, as the sessions do)."""

    def __init__(self, lm, lock):
        self.lm, self.lock = lm, lock

    def step(self, input_ids, state):
        with self.lock, torch.no_grad():
            return self.lm.step(input_ids, state)


class ReferenceReply:
    """A `ReplyStream` over one `Decoder` run (whose stop_event is `stop_event`). `close()` may come from any thread:
    it waits for the token being computed."""

    def __init__(self, decoder: Decoder, stop_event: threading.Event, *, prompt_tokens: int,
                 context_cap: int | None):
        self._decoder, self._stop_event = decoder, stop_event
        self._prompt_tokens, self._cap = prompt_tokens, context_cap
        self._lock = threading.Lock()
        self._run_events = self._run()
        self.text = ""
        self.stats: ReferenceStats | None = None

    def events(self) -> Iterator[TokenEvent]:
        while True:
            with self._lock:
                event = next(self._run_events, None)
            if event is None:
                return
            yield event

    def close(self) -> None:
        self._stop_event.set()
        with self._lock:
            self._run_events.close()
            if self.stats is None:  # closed before the first token was asked for
                self._finish()

    def _run(self) -> Iterator[TokenEvent]:
        decoded = iter(self._decoder)
        try:
            for event in decoded:
                self.text += event.text
                yield event
        finally:
            decoded.close()
            self._finish()

    def _finish(self) -> None:
        result = self._decoder.result
        generated = result.token_ids if result is not None else []
        finish = result.finish_reason if result is not None else "stopped"
        if finish == "length" and self._cap is not None and len(generated) >= self._cap:
            finish = "context"
        self.stats = ReferenceStats(self._prompt_tokens, 0, len(generated), finish,
                                    self._prompt_tokens + max(len(generated) - 1, 0))


class ReferenceBackend:
    """`ChatBackend` by full recompute. `max_context_tokens`: text tokens the conversation may hold, reply included
    (default the model's `llm_max_length`; image patches are not counted, as in the release). One model call at a
    time (replies in flight interleave token by token)."""

    def __init__(self, cobra, *, max_context_tokens: int | None = None):
        self.cobra = cobra
        self.max_context_tokens = int(max_context_tokens or cobra.config.llm_max_length)
        self.model_lock = threading.Lock()

    def complete(self, image: Image.Image | None, messages: Sequence[Message], params: SamplingParams | None = None,
                 *, top_logprobs: int | None = None) -> ReferenceReply:
        cobra, params = self.cobra, params or SamplingParams()
        ids = conversation_ids(cobra.turns, messages)
        room = self.max_context_tokens - len(ids) - 1  # the closing EOS must fit too
        if room < 1:
            raise ContextFull(f"{len(ids)} prompt tokens, limit {self.max_context_tokens}",
                              f"This conversation is {len(ids)} tokens long; the model reads at most "
                              f"{self.max_context_tokens} tokens of text, the reply included. Shorten it or start a "
                              "new conversation.")
        cap = room if room < params.max_new_tokens else None
        if cap is not None:
            params = dataclasses.replace(params, max_new_tokens=cap)
        with self.model_lock, torch.no_grad():
            embeds = None if image is None else cobra.encode_image(image)
            logits, state = cobra.vlm.prefill(torch.tensor([ids], device=cobra.device), embeds)
        stop_event = threading.Event()
        decoder = Decoder(_LockedLM(cobra.vlm.llm, self.model_lock), logits[0, -1], state, params, cobra.turns.eos_id,
                          stop_event=stop_event, history_ids=ids, streamer=TextStreamer(cobra.tokenizer),
                          vocab_size=cobra.vocab_size, logprobs=top_logprobs)
        patches = 0 if embeds is None else int(embeds.shape[1])
        return ReferenceReply(decoder, stop_event, prompt_tokens=patches + len(ids), context_cap=cap)
