"""Replies on top of the state store: resume a prompt from its longest cached prefix, run the reply, conclude it.

Shared by the sessions (the UI, the terminal chat) and the stateless completions (the HTTP API): both hand in the
prompt's text ids, so the same image and ids meet the same stored states whoever sent them.

A reply's life:
    1. `locate`: the prompt's prefix keys (`keys.prefix_keys`); the longest one stored in the memory or disk tier is
       where the prompt resumes. Nothing stored: the image prefix (the patches read alone, shared by every
       conversation about the image) is computed and stored first.
    2. `start`: one `ModelCalls.reply` call reads the rest of the prompt in one chunk (its state, the one before the
       reply, is stored: regenerate and the next request resume there), then decodes.
    3. `conclude`: the reply enters the history (`session.reply_segment`). The decoder's last state (every reply id
       read but the last: the loop never feeds the last one) is stored under its own ids when those ids begin the
       reply segment the history holds; the next turn then reads the last id, EOS and its new user segment in one
       chunk. When they do not (the release's history re-tokenized the reply differently), the next turn resumes
       from the state before the reply and reads the reply's history ids and its user segment in one chunk: O(new
       tokens) either way, no model call at the end of a reply.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image
from torch import Tensor

from cobra_app.generation import SamplingParams
from cobra_app.generation.decode import FinishReason
from cobra_app.sessions.compute import ModelCalls
from cobra_app.sessions.keys import prefix_keys
from cobra_app.sessions.protocol import SessionModel
from cobra_app.sessions.reply import ReplyEnd, ReplyRun, ReplyStats
from cobra_app.sessions.session import HistoryMode, reply_segment
from cobra_app.sessions.snapshot import Snapshot
from cobra_app.sessions.store import StateStore

EMPTY = Snapshot(None, None, 0)


@dataclass(frozen=True)
class Resume:
    """Where a prompt of `len(keys) - 1` text ids resumes. `base`: the state after `pos` of them (and the image
    patches); `image_tokens`: patches in front (0 without an image); `read_image`: the patches had to be read now."""

    image_key: str | None
    keys: list[str]
    base: Snapshot
    pos: int
    image_tokens: int
    read_image: bool

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens (patches included) taken from the store."""
        return 0 if self.read_image else self.image_tokens + self.pos


@dataclass(frozen=True)
class Conclusion:
    """A finished reply as the history keeps it: the text shown, the segment kept, how it ended, its stats, and the
    text position of the decoder's state when it was stored (None otherwise)."""

    generated_ids: list[int]
    text: str
    kept_ids: list[int]
    finish_reason: FinishReason
    stats: ReplyStats
    saved_at: int | None


class ReplyEngine:
    """Replies of one model over one store. `max_context_tokens` limits a conversation's text ids."""

    def __init__(self, model: SessionModel, calls: ModelCalls, store: StateStore, max_context_tokens: int):
        self.model, self.calls, self.store, self.max_context_tokens = model, calls, store, max_context_tokens
        self._identity: str | None = None
        self._state_bytes: int | None = None
        self._image_lock = threading.Lock()  # one image prefix computed at a time: concurrent askers wait for it
        self._lock = threading.Lock()
        self.counts = {"image_encodes": 0, "image_hits": 0, "prompt_tokens": 0, "cached_tokens": 0}

    def count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                self.counts[name] += delta

    @property
    def identity(self) -> str:
        if self._identity is None:
            self._identity = self.calls.identity()
        return self._identity

    @property
    def state_bytes(self) -> int:
        if self._state_bytes is None:
            self._state_bytes = int(self.model.info()["state_bytes"])
        return self._state_bytes

    def keys(self, image_key: str | None, ids: Sequence[int]) -> list[str]:
        return prefix_keys(self.identity, image_key, ids)

    # --- resuming ---------------------------------------------------------------------------------------------------
    def embeds(self, image: Image.Image, image_key: str) -> Tensor:
        """The image's projected patches [1, P, d], encoded once while they stay in memory."""
        embeds = self.store.embeds((self.identity, image_key))
        if embeds is not None:
            self.count(image_hits=1)
            return embeds
        embeds = self.calls.encode(image)
        self.count(image_encodes=1)
        self.store.put_embeds((self.identity, image_key), embeds)
        return embeds

    def image_prefix(self, image: Image.Image | None, image_key: str | None) -> tuple[Snapshot, bool]:
        """The state after the image patches (stored, shared by every conversation about the image), or the empty
        state without an image -> (snapshot, whether the patches were read now)."""
        if image_key is None:
            return EMPTY, False
        key = self.keys(image_key, [])[0]
        if (snap := self.store.get(key)) is not None:
            return snap, False
        with self._image_lock:
            if (snap := self.store.get(key)) is not None:
                return snap, False
            snap = self.calls.read(EMPTY, [], self.embeds(image, image_key))
            self.store.put(key, snap)
            return snap, True

    def locate(self, image: Image.Image | None, image_key: str | None, ids: Sequence[int]) -> Resume:
        """The longest stored prefix of [image, ids] (the image prefix computed if nothing is stored)."""
        keys = self.keys(image_key, ids)
        found = self.store.longest(keys)
        if found is not None:
            pos, base = found
            read_image = False
        else:
            (base, read_image), pos = self.image_prefix(image, image_key), 0
        patches = 0 if base.state is None else base.state.seqlen - base.text_tokens
        return Resume(image_key, keys, base, pos, patches, read_image)

    def materialize(self, image: Image.Image | None, image_key: str | None, ids: Sequence[int]) -> Snapshot:
        """The snapshot after [image, ids], read from the longest stored prefix (and stored)."""
        resume = self.locate(image, image_key, ids)
        if resume.pos == len(ids) and resume.base.logits is not None:
            return resume.base
        snap = self.calls.read(resume.base, ids[resume.pos:])
        self.store.put(resume.keys[-1], snap)
        return snap

    # --- replies ----------------------------------------------------------------------------------------------------
    def start(self, resume: Resume, prompt: list[int], params: SamplingParams, *,
              finish: Callable[[ReplyEnd], ReplyStats], touch: Callable[[], None] = lambda: None,
              on_prefilled: Callable[[Snapshot], None] = lambda snap: None, logprobs: int | None = None,
              t0: float | None = None, exchange: object = None) -> ReplyRun:
        """The reply to `prompt` (its text ids) from `resume`: reads the rest of the prompt (storing the state before
        the reply, then calling on_prefilled) and decodes. `finish` concludes it (see `conclude`)."""
        stop_event = threading.Event()

        def prefilled(snap: Snapshot) -> None:
            self.store.put(resume.keys[-1], snap)
            on_prefilled(snap)

        events = self.calls.reply(resume.base, prompt[resume.pos:], params, prompt, logprobs,
                                  None if self.calls.stops_by_closing else stop_event)
        return ReplyRun(events, finish, stop_event, touch, time.perf_counter() if t0 is None else t0,
                        exchange=exchange, on_prefilled=prefilled, stop_by_closing=self.calls.stops_by_closing)

    def conclude(self, resume: Resume, prompt: list[int], end: ReplyEnd, *, mode: HistoryMode,
                 cap: int | None, expected: int | None) -> Conclusion:
        """Turn what the reply generated into the history's segment, store the decoder's state when the history goes
        through it, and measure. expected: the text position the caller expected to resume from (a session's
        newest state there; None for a stateless request): reading from earlier counts as rebuilt."""
        generated, result = list(end.token_ids), end.result
        interrupted = end.error is None or isinstance(end.error, (KeyboardInterrupt, GeneratorExit))
        finish: FinishReason = (result.finish_reason if result is not None else "stopped") if interrupted else "error"
        if finish == "length" and cap is not None and len(generated) >= cap:
            finish = "context"
        text, kept = reply_segment(generated, mode, self.model.turns, self.model.tokenizer)
        while generated and len(prompt) + len(kept) > self.max_context_tokens:  # re-tokenized past the limit
            generated = generated[:-1]
            text, kept = reply_segment(generated, mode, self.model.turns, self.model.tokenizer)
            finish = "context"
        saved_at = None
        if result is not None and len(end.token_ids) > 1 and result.state is not None:
            fed = end.token_ids[:-1]  # the decoder's state has read these
            if kept[: len(fed)] == fed:
                saved_at = len(prompt) + len(fed)
                self.store.put(self.keys(resume.image_key, [*prompt, *fed])[-1],
                               Snapshot(result.state, result.logits, saved_at))
        return Conclusion(generated, text, kept, finish,
                          self._stats(resume, prompt, end, kept, finish, expected), saved_at)

    def _stats(self, resume: Resume, prompt: list[int], end: ReplyEnd, kept: list[int], finish: FinishReason,
               expected: int | None) -> ReplyStats:
        n, start, patches_read = len(prompt), resume.pos, resume.image_tokens if resume.read_image else 0
        read = n - start if end.prefilled else 0
        if expected is None or not read:
            rebuilt, prefill = (patches_read if expected is not None else 0), read
        else:
            rebuilt, prefill = patches_read + max(0, expected - start), n - max(start, expected)
        self.count(prompt_tokens=resume.image_tokens + n, cached_tokens=resume.cached_tokens)
        tokens = len(end.token_ids)
        ttft, decode_s, total = end.seconds()
        return ReplyStats(
            ttft_s=ttft, tokens_per_s=(tokens - 1) / decode_s if tokens > 1 and decode_s > 0 else 0.0,
            new_tokens=tokens, prefill_tokens=prefill, context_tokens=n + len(kept), state_bytes=self.state_bytes,
            finish_reason=finish, rebuilt_tokens=rebuilt,
            processed_tokens=patches_read + read + max(tokens - 1, 0), image_tokens=resume.image_tokens,
            total_s=total, cache_hit=rebuilt == 0, prompt_tokens=resume.image_tokens + n,
            cached_tokens=resume.cached_tokens)

