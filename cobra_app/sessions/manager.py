"""Conversation sessions over one loaded model: follow-up turns cost only their new tokens.

    manager = SessionManager(cobra)                    # cobra: cobra_app.pipeline.Cobra
    sid = manager.open_session()
    manager.set_image(sid, image)                      # optional: text-only chats are allowed
    for delta in manager.send(sid, "What is in the image?", SamplingParams()):
        print(delta, end="")

API (thread-safe; every method may be called from any thread)
    SessionManager(cobra, *, memory_budget_bytes=2 << 30, idle_timeout_s=3600.0, max_context_tokens=None, max_batch=8,
                   clock=time.monotonic)
        max_context_tokens: limit on the conversation's *text* tokens (default `cobra.config.llm_max_length`, 2048 for
        cobra+3b). Image patches are not counted, as in the release, which truncates the text ids to llm_max_length
        and puts the patches in front of them.
    open_session() -> str                  an unguessable id (secrets.token_urlsafe)
    close_session(sid)                     stops any reply in flight, frees the session's snapshots (unknown id: no-op)
    set_image(sid, image | None)           a different image starts a new conversation (the release's rule: the image
                                           patches precede all text, so an image cannot join a conversation midway).
                                           Setting an image with the same content as the current one (or None when
                                           there is none) keeps the conversation: UIs may re-send the same image.
                                           The embeddings and the image-prefix state are computed here, not at the
                                           first message.
    send(sid, message, params=None) -> Reply
                                           prefills only the new user segment on top of the saved state
                                           (params: SamplingParams, None for the defaults)
    regenerate(sid, params=None) -> Reply
                                           a new reply to the last message, decoded from the state saved before the
                                           old reply (no prefill at all)
    edit(sid, turn_index, message, params=None) -> Reply
                                           replaces user message `turn_index` (0-based), drops the turns after it and
                                           continues from the state saved at that point
    undo(sid)                              removes the last exchange (user message and reply)
    reset(sid)                             clears the conversation, keeps the image
    stop(sid)                              ends the reply in flight and returns once it is saved: the partial reply is
                                           kept and the state is consistent with it (no reply in flight: no-op)
    history(sid) -> [(user, reply | None)] reply None while it is being generated; a reply is its generated ids
                                           decoded (the streamed text, not stripped; "" if stopped before a token)
    score(sid, question, answers="yes-no") -> {word: prob}
                                           closed-set probe (paper protocol) of a single-turn question on the
                                           session's image, from the cached image-prefix state; the conversation is
                                           untouched and a reply may be in flight meanwhile
    stats() -> dict                        bytes_in_use, budget_bytes, sessions, hits, misses, rebuilds, evictions,
                                           plus entries, peak_bytes, oversized, image_encodes, image_hits,
                                           rebuilt_tokens, replies_in_flight, decode_steps, decoded_tokens
                                           (decoded_tokens > decode_steps when steps were batched across
                                           sessions). hits/misses: lookups of the state a
                                           turn starts from (and `snapshot` calls) found in / missing from the cache;
                                           rebuilds: states recomputed from history (rebuilt_tokens: tokens re-read);
                                           evictions: LRU entries dropped for space; oversized: values larger than
                                           the whole budget (never stored)
    snapshot(sid, turn_index=None, when="after") -> Snapshot
                                           (inspection, tests) the state at a turn boundary, rebuilt if evicted;
                                           turn_index None: the end of the conversation
    token_ids(sid) -> list[int]            (inspection, tests) the conversation's text ids as the model read them

Reply: an iterator of text deltas (str), never half a UTF-8 character. It is safe to abandon: `close()` (or `stop`,
or leaving a `with` block) ends it synchronously, keeping the partial reply; a Reply dropped without that is finished
by the next call on its session. After exhaustion `.stats` is a `ReplyStats`; `.text` is the text streamed so far.

Errors: subclasses of `SessionError` with a plain-words `.user_message` (see `cobra_app.sessions.errors`):
SessionNotFound (unknown, closed or expired id), ReplyInProgress, ContextFull, EmptyMessage, NoSuchTurn.

How a turn works (see `session.py` for the boundary chain)
    1. The state after the previous turn is looked up (a cache hit), or rebuilt from the nearest earlier snapshot
       still cached and the token history (a miss and a rebuild); the first turn starts from the image-prefix state
       (the image patches read on their own), cached per image and shared by sessions.
    2. The new user segment (per-turn tokenization, as the release trained) is prefilled on top: its state and
       next-token logits are saved ("before" snapshot: regenerate decodes from it).
    3. The reply is streamed by `Decoder`; the model never reads the last token while decoding, so afterwards the
       closing ids (the pending token, then EOS unless it was EOS) are fed, and the state is saved ("after"
       snapshot). The history keeps the generated ids, not re-tokenized text. A reply stopped before its first token
       is written as the release writes an empty reply: " " + EOS.
    The saved state therefore equals a full recompute of [image patches] + all turns' ids (up to float rounding).

Memory: one `MemoryStore` byte budget holds image embeddings, image-prefix states and turn snapshots, LRU across
sessions; bytes are measured from the tensors. When a reply ends, the session's snapshots older than its last two
turns (needed only to edit old messages) are moved to the front of the LRU order, so they go before any session's
current state. Nothing is lost on eviction: a state is rebuilt from the token
history and the cached embeddings (or the session's image, re-encoded). Images are encoded once per content while
their embeddings stay cached. The sessions' images and token lists (needed for rebuilds) are not counted in the
budget. Sessions idle for `idle_timeout_s` (by `clock`) expire: their snapshots are freed and their id raises
SessionNotFound(reason="expired").

Concurrency: a per-session lock serialises changes to one session and at most one reply per session is in flight
(others raise ReplyInProgress). Model calls are serialised by one manager-wide lock taken per call (each prefill,
each decode step). Decode steps of replies generating at the same time are batched (`BatchedStepper`, up to
`max_batch` sessions per step, their states stacked): one pass over the weights serves them all.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

import torch
from PIL import Image

from cobra_app.generation import Decoder, SamplingParams, TextStreamer, get_answer_pair
from cobra_app.generation.batching import BatchedStepper
from cobra_app.generation.decode import DecodeResult
from cobra_app.prompting import clean_message
from cobra_app.sessions.errors import ContextFull, EmptyMessage, NoSuchTurn, ReplyInProgress, SessionError
from cobra_app.sessions.protocol import SessionModel
from cobra_app.sessions.registry import SessionRegistry
from cobra_app.sessions.reply import Reply, ReplyEnd, ReplyRun, ReplyStats
from cobra_app.sessions.session import Exchange, Session, Snapshot, When, image_key
from cobra_app.sessions.store import StateStore

DEFAULT_MEMORY_BUDGET = 2 << 30


def _check_params(params: SamplingParams | None) -> SamplingParams:
    if params is None:
        return SamplingParams()
    if not isinstance(params, SamplingParams):
        raise TypeError(f"params must be SamplingParams or None, got {type(params).__name__}")
    return params


class SessionManager:
    """Conversations over one model, with cached recurrent state. See the module docstring for the API."""

    def __init__(self, cobra: SessionModel, *, memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
                 idle_timeout_s: float = 3600.0, max_context_tokens: int | None = None, max_batch: int = 8,
                 clock: Callable[[], float] = time.monotonic):
        self.cobra = cobra
        self.max_context_tokens = int(max_context_tokens if max_context_tokens is not None
                                      else cobra.config.llm_max_length)
        if self.max_context_tokens < 2:
            raise ValueError(f"max_context_tokens must be >= 2, got {self.max_context_tokens}")
        self.clock = clock
        self._model_lock = threading.RLock()  # one model call at a time
        self.store = StateStore(cobra, memory_budget_bytes, self._model_lock)
        self.registry = SessionRegistry(idle_timeout_s, clock, on_end=lambda s: self._truncate(s, 0))
        self._step_lm = BatchedStepper(cobra, max_batch=max_batch, model_lock=self._model_lock)

    @property
    def idle_timeout_s(self) -> float:
        return self.registry.idle_timeout_s

    # --- public API -------------------------------------------------------------------------------------------------
    def open_session(self) -> str:
        return self.registry.open().sid

    def close_session(self, sid: str) -> None:
        self.registry.close(sid)

    def set_image(self, sid: str, image: Image.Image | None) -> None:
        s = self._session(sid)
        with s.lock:
            self._check_idle(s)
            image = None if image is None else image.copy()
            key = image_key(image)
            if key == s.image_key:
                return
            previous = s.image, s.image_key
            s.image, s.image_key = image, key
            try:
                self.store.start_snapshot(s)  # encode (or reuse) now; a bad image leaves the session as it was
            except BaseException:
                s.image, s.image_key = previous
                raise
            self._truncate(s, 0)

    def send(self, sid: str, message: str, params: SamplingParams | None = None) -> Reply:
        params = _check_params(params)
        t0 = time.perf_counter()
        s = self._session(sid)
        with s.lock:
            self._check_idle(s)
            return self._begin_turn(s, len(s.exchanges), message, params, t0)

    def regenerate(self, sid: str, params: SamplingParams | None = None) -> Reply:
        params = _check_params(params)
        t0 = time.perf_counter()
        s = self._session(sid)
        with s.lock:
            self._check_idle(s)
            if not s.exchanges:
                raise NoSuchTurn("regenerate: no turns", "There is no reply to regenerate yet.")
            k = len(s.exchanges) - 1
            start, rebuilt, hit = self.store.resolve(s, Session.before(k))
            params, cap = self._fit(start, params)
            exchange = s.exchanges[k]
            self.store.memory.discard(s.snapshot_key(Session.after(k)))
            exchange.reply, exchange.reply_ids, exchange.generated_ids, exchange.finish_reason = None, [], [], None
            return self._start_reply(s, exchange, start, params, cap, t0, prefill_tokens=0, rebuilt=rebuilt, hit=hit)

    def edit(self, sid: str, turn_index: int, message: str, params: SamplingParams | None = None) -> Reply:
        params = _check_params(params)
        t0 = time.perf_counter()
        s = self._session(sid)
        with s.lock:
            self._check_idle(s)
            if not (isinstance(turn_index, int) and 0 <= turn_index < len(s.exchanges)):
                raise NoSuchTurn(f"edit: no turn {turn_index!r} (conversation has {len(s.exchanges)})")
            return self._begin_turn(s, turn_index, message, params, t0)

    def undo(self, sid: str) -> None:
        s = self._session(sid)
        with s.lock:
            self._check_idle(s)
            if not s.exchanges:
                raise NoSuchTurn("undo: no turns", "There is nothing to undo.")
            self._truncate(s, len(s.exchanges) - 1)

    def reset(self, sid: str) -> None:
        s = self._session(sid)
        with s.lock:
            self._check_idle(s)
            self._truncate(s, 0)

    def stop(self, sid: str) -> None:
        active = self._session(sid).active
        if active is not None:
            active.stop()

    def history(self, sid: str) -> list[tuple[str, str | None]]:
        s = self._session(sid)
        with s.lock:
            return s.history()

    def score(self, sid: str, question: str, answers: str = "yes-no") -> dict[str, float]:
        s = self._session(sid)
        if not clean_message(question):
            raise EmptyMessage("score: empty question")
        pair = get_answer_pair(answers)
        ids = self.cobra.turns.user_turn_ids(question, first=True)
        if len(ids) > self.max_context_tokens:
            raise ContextFull(f"score: question of {len(ids)} tokens", self._too_long_message(len(ids)))
        with s.lock:
            self._check_open(s)
            start, _ = self.store.start_snapshot(s)
        logits, _ = self.store.read(ids, start.state)
        return dict(zip(pair.words, pair.probs(logits, self.cobra.turns)))

    def stats(self) -> dict:
        self.registry.sweep()
        sessions = self.registry.live()
        counters, memory = dict(self.store.counters), self.store.memory
        return {
            "bytes_in_use": memory.bytes_in_use,
            "budget_bytes": memory.budget_bytes,
            "sessions": len(sessions),
            **{k: counters[k] for k in ("hits", "misses", "rebuilds")},
            "evictions": memory.evictions,
            "entries": len(memory),
            "peak_bytes": memory.peak_bytes,
            "oversized": memory.oversized,
            **{k: counters[k] for k in ("image_encodes", "image_hits", "rebuilt_tokens")},
            "replies_in_flight": sum(s.active is not None for s in sessions),
            "decode_steps": self._step_lm.batches,
            "decoded_tokens": self._step_lm.rows,
        }

    def snapshot(self, sid: str, turn_index: int | None = None, when: When = "after") -> Snapshot:
        s = self._session(sid)
        with s.lock:
            self._check_idle(s)
            if turn_index is None:
                boundary = Session.after(len(s.exchanges) - 1) if s.exchanges else 0
            elif 0 <= turn_index < len(s.exchanges) and when in ("before", "after"):
                boundary = (Session.before if when == "before" else Session.after)(turn_index)
            else:
                raise NoSuchTurn(f"snapshot: no turn {turn_index!r}/{when!r} (conversation has {len(s.exchanges)})")
            return self.store.resolve(s, boundary)[0]

    def token_ids(self, sid: str) -> list[int]:
        s = self._session(sid)
        with s.lock:
            return s.text_ids()

    # --- sessions ---------------------------------------------------------------------------------------------------
    def _session(self, sid: str) -> Session:
        """The live session (touched); finishes an abandoned reply of it first."""
        s = self.registry.get(sid)
        active = s.active
        if active is not None and active.abandoned:
            active.stop()
        return s

    def _check_open(self, s: Session) -> None:
        if s.closed:
            raise self.registry.not_found(s.sid)

    def _check_idle(self, s: Session) -> None:
        """Under s.lock: the session is live and has no reply in flight."""
        self._check_open(s)
        if s.active is not None:
            raise ReplyInProgress(f"session {s.sid[:6]}...: a reply is in flight")

    def _truncate(self, s: Session, k: int) -> None:
        """Under s.lock: drop exchanges k.. and their snapshots."""
        for exchange in s.exchanges[k:]:
            for when in ("before", "after"):
                self.store.memory.discard(("snapshot", s.sid, exchange.uid, when))
        del s.exchanges[k:]

    # --- turns ------------------------------------------------------------------------------------------------------
    def _begin_turn(self, s: Session, k: int, message: str, params: SamplingParams, t0: float) -> Reply:
        """Under s.lock, session idle: make `message` user turn k (dropping exchanges k..) and start its reply."""
        if not isinstance(message, str) or not clean_message(message):
            raise EmptyMessage("empty message")
        user_ids = self.cobra.turns.user_turn_ids(message, first=k == 0)
        before_tokens = sum(len(t.user_ids) + len(t.reply_ids) for t in s.exchanges[:k])
        if before_tokens + len(user_ids) + 2 > self.max_context_tokens:  # room for one reply token and EOS
            first_ids = user_ids if k == 0 else self.cobra.turns.user_turn_ids(message, first=True)
            if len(first_ids) + 2 > self.max_context_tokens:
                raise ContextFull(f"message of {len(first_ids)} tokens", self._too_long_message(len(first_ids)))
            raise ContextFull(
                f"context {before_tokens} + {len(user_ids)} tokens > {self.max_context_tokens}",
                f"This conversation has reached the model's context limit ({self.max_context_tokens} tokens). "
                "Please start a new conversation to continue (or undo some messages).",
            )
        base, rebuilt, hit = self.store.resolve(s, 2 * k)  # boundary 2k: after exchange k-1 (the start when k == 0)
        logits, state = self.store.read(user_ids, base.state)
        start = Snapshot(state, logits, base.text_tokens + len(user_ids))
        params, cap = self._fit(start, params)
        self._truncate(s, k)
        exchange = Exchange(message, user_ids, s.new_uid())
        s.exchanges.append(exchange)
        self.store.memory.put(s.snapshot_key(Session.before(k)), start)
        return self._start_reply(s, exchange, start, params, cap, t0, prefill_tokens=len(user_ids), rebuilt=rebuilt,
                                 hit=hit)

    def _fit(self, start: Snapshot, params: SamplingParams) -> tuple[SamplingParams, int | None]:
        """Cap max_new_tokens to the room left in the context -> (params, the cap or None)."""
        room = self.max_context_tokens - start.text_tokens - 1  # the closing EOS must fit too
        if room < 1:
            raise ContextFull(f"no room for a reply after {start.text_tokens} tokens")
        if room >= params.max_new_tokens:
            return params, None
        return dataclasses.replace(params, max_new_tokens=room), room

    def _start_reply(self, s: Session, exchange: Exchange, start: Snapshot, params: SamplingParams, cap: int | None,
                     t0: float, *, prefill_tokens: int, rebuilt: int, hit: bool) -> Reply:
        stop_event = threading.Event()
        decoder = Decoder(
            self._step_lm, start.logits, start.state, params, self.cobra.turns.eos_id, stop_event=stop_event,
            history_ids=s.text_ids(Session.before(len(s.exchanges) - 1)), streamer=TextStreamer(self.cobra.tokenizer),
            vocab_size=self.cobra.vocab_size,
        )

        def events():
            yield from decoder
            yield decoder.result

        def finish(end: ReplyEnd) -> ReplyStats:
            return self._finish_reply(s, run, start, decoder.result, end, prefill_tokens=prefill_tokens,
                                      rebuilt=rebuilt, hit=hit, cap=cap)

        def touch() -> None:
            s.last_used = self.clock()

        run = ReplyRun(events(), finish, stop_event, touch, t0, exchange)
        s.active = run
        return Reply(run, lambda: s.exchanges.index(exchange) if exchange in s.exchanges else -1)

    def _finish_reply(self, s: Session, run: ReplyRun, start: Snapshot, result: DecodeResult | None,
                      end: ReplyEnd, *, prefill_tokens: int, rebuilt: int, hit: bool, cap: int | None) -> ReplyStats:
        """Feed the closing ids, save the reply and the "after" snapshot, free the session."""
        exchange = run.exchange
        eos = self.cobra.turns.eos_id
        result = result or DecodeResult([], "stopped", start.state, None)
        tokens = list(result.token_ids)
        if tokens:
            feed = result.closing_ids(eos)
            segment = tokens if tokens[-1] == eos else tokens + [eos]
        else:
            feed = segment = self.cobra.turns.assistant_turn_ids("")  # the release's empty reply: " " + EOS
        try:
            try:
                _, state = self.store.read(feed, result.state, keep_logits=False)
            except BaseException:
                with s.lock:  # the state cannot be closed: drop the whole exchange rather than keep a broken one
                    if exchange in s.exchanges:
                        self._truncate(s, s.exchanges.index(exchange))
                raise
            interrupted = end.error is None or isinstance(end.error, (KeyboardInterrupt, GeneratorExit))
            finish = result.finish_reason if interrupted else "error"
            if finish == "length" and cap is not None and len(tokens) >= cap:
                finish = "context"
            with s.lock:
                exchange.generated_ids = tokens
                exchange.reply_ids = segment
                exchange.reply = self.cobra.tokenizer.decode(tokens, skip_special_tokens=True)
                exchange.finish_reason = finish
                context_tokens = start.text_tokens + len(segment)
                if exchange in s.exchanges and not s.closed:
                    k = s.exchanges.index(exchange)
                    self.store.memory.put(s.snapshot_key(Session.after(k)), Snapshot(state, None, context_tokens))
                    # Snapshots older than the last two exchanges only serve edits of old messages: evict them before
                    # anyone's current state (oldest first; a rebuild starts from the nearest later one kept).
                    self.store.memory.demote([s.snapshot_key(b) for b in range(1, Session.before(k - 1))])
            ttft, decode_s, total = end.seconds()
            return ReplyStats(
                ttft_s=ttft,
                tokens_per_s=(len(tokens) - 1) / decode_s if len(tokens) > 1 and decode_s > 0 else 0.0,
                new_tokens=len(tokens),
                prefill_tokens=prefill_tokens,
                context_tokens=context_tokens,
                state_bytes=state.nbytes,
                finish_reason=finish,
                rebuilt_tokens=rebuilt,
                processed_tokens=rebuilt + prefill_tokens + max(len(tokens) - 1, 0) + len(feed),
                image_tokens=max(state.seqlen - context_tokens, 0),
                total_s=total,
                cache_hit=hit,
            )
        finally:
            with s.lock:
                if s.active is run:
                    s.active = None

    def _too_long_message(self, n: int) -> str:
        return (f"Your message is too long for the model ({n} tokens; the limit is {self.max_context_tokens} "
                "tokens for a whole conversation). Please shorten it.")


__all__ = ["Reply", "ReplyStats", "SessionError", "SessionManager", "Snapshot"]
