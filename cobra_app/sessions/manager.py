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
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from cobra_app.generation import Decoder, SamplingParams, TextStreamer, get_answer_pair
from cobra_app.generation.batching import BatchedStepper
from cobra_app.generation.decode import DecodeResult
from cobra_app.prompting import clean_message
from cobra_app.sessions.errors import (
    ContextFull,
    EmptyMessage,
    NoSuchTurn,
    ReplyInProgress,
    SessionError,
    SessionNotFound,
)
from cobra_app.sessions.memory import MemoryStore
from cobra_app.sessions.session import Session, Snapshot, Turn, When, image_key

DEFAULT_MEMORY_BUDGET = 2 << 30
MAX_ENDED_IDS = 10_000  # closed/expired ids remembered to say why they are gone

FinishReason = str  # "eos" | "length" | "stopped" | "context" (the reply filled the context) | "error"


@dataclass(frozen=True)
class ReplyStats:
    """How a reply went.

    ttft_s: from the call (send/regenerate/edit) to the first generated token, rebuilds and prefill included.
    tokens_per_s: decoding speed after the first token ((new_tokens - 1) / time from the first to the last token).
    new_tokens: generated ids (EOS included when generated). prefill_tokens: the new user segment's ids (0 for
    regenerate). rebuilt_tokens: tokens re-read to rebuild evicted state (image patches included).
    processed_tokens: every token the model read for this reply (rebuild + prefill + decode steps + closing ids).
    context_tokens: text tokens in the conversation after this reply (the quantity `max_context_tokens` limits).
    image_tokens: image patches in front of the text. state_bytes: size of the saved state.
    finish_reason: "eos", "length" (max_new_tokens), "stopped", "context" (the reply reached the context limit; the
    next message will raise ContextFull) or "error". cache_hit: the starting state was cached (no rebuild).
    """

    ttft_s: float
    tokens_per_s: float
    new_tokens: int
    prefill_tokens: int
    context_tokens: int
    state_bytes: int
    finish_reason: FinishReason
    rebuilt_tokens: int = 0
    processed_tokens: int = 0
    image_tokens: int = 0
    total_s: float = 0.0
    cache_hit: bool = True


def _check_params(params: SamplingParams | None) -> SamplingParams:
    if params is None:
        return SamplingParams()
    if not isinstance(params, SamplingParams):
        raise TypeError(f"params must be SamplingParams or None, got {type(params).__name__}")
    return params


class _ActiveReply:
    """The reply in flight of one session: drives the Decoder and saves the turn when decoding ends."""

    def __init__(self, manager: SessionManager, session: Session, turn: Turn, start: Snapshot, params: SamplingParams,
                 *, t0: float, prefill_tokens: int, rebuilt_tokens: int, cache_hit: bool, context_cap: int | None):
        self.manager, self.session, self.turn, self.start = manager, session, turn, start
        self.t0, self.prefill_tokens, self.rebuilt_tokens = t0, prefill_tokens, rebuilt_tokens
        self.cache_hit, self.context_cap = cache_hit, context_cap
        self.stop_event = threading.Event()
        self.lock = threading.RLock()
        self.done = False
        self.abandoned = False
        self.text = ""
        self.stats: ReplyStats | None = None
        self.t_first: float | None = None
        self.t_last: float | None = None
        cobra = manager.cobra
        self.decoder = Decoder(
            manager._step_lm, start.logits, start.state, params, cobra.turns.eos_id,
            stop_event=self.stop_event, history_ids=session.text_ids(Session.before(len(session.turns) - 1)),
            streamer=TextStreamer(cobra.tokenizer), vocab_size=cobra.vocab_size,
        )
        self._events = iter(self.decoder)

    @property
    def turn_index(self) -> int:
        return self.session.turns.index(self.turn) if self.turn in self.session.turns else -1

    def next(self) -> str:
        with self.lock:
            while not self.done:
                try:
                    event = next(self._events)
                except StopIteration:
                    self._finish(None)
                    break
                except BaseException as exc:  # model error, KeyboardInterrupt: save what was generated, re-raise
                    self._finish(exc)
                    raise
                if event.token_id is not None:
                    self.t_last = time.perf_counter()
                    self.t_first = self.t_first or self.t_last
                    self.session.last_used = self.manager.clock()
                if event.text:
                    self.text += event.text
                    return event.text
            raise StopIteration

    def stop(self) -> None:
        """End decoding (waiting for a token being computed in another thread) and save the turn. Idempotent."""
        self.stop_event.set()
        with self.lock:
            if self.done:
                return
            try:
                for event in self._events:  # the decoder sees the stop request before any further model step
                    self.text += event.text
            except BaseException as exc:
                self._finish(exc)
                raise
            self._finish(None)

    def _finish(self, error: BaseException | None) -> None:
        """Feed the closing ids, save the reply and the "after" snapshot, free the session."""
        self.done = True
        m, s, turn, cobra = self.manager, self.session, self.turn, self.manager.cobra
        eos = cobra.turns.eos_id
        result = self.decoder.result or DecodeResult([], "stopped", self.start.state, None)
        tokens = list(result.token_ids)
        if tokens:
            feed = result.closing_ids(eos)
            segment = tokens if tokens[-1] == eos else tokens + [eos]
        else:
            feed = segment = cobra.turns.assistant_turn_ids("")  # the release's empty reply: " " + EOS
        try:
            try:
                with m._model_lock, torch.no_grad():
                    _, state = cobra.vlm.llm(torch.tensor([feed], device=cobra.device), state=result.state,
                                             logits_to_keep=1)
                state = state.clone()
            except BaseException:
                with s.lock:  # the state cannot be closed: drop the whole exchange rather than keep a broken one
                    if turn in s.turns:
                        m._truncate(s, s.turns.index(turn))
                raise
            interrupted = error is None or isinstance(error, (KeyboardInterrupt, GeneratorExit))
            finish = result.finish_reason if interrupted else "error"
            if finish == "length" and self.context_cap is not None and len(tokens) >= self.context_cap:
                finish = "context"
            with s.lock:
                turn.generated_ids = tokens
                turn.reply_ids = segment
                turn.reply = cobra.tokenizer.decode(tokens, skip_special_tokens=True)
                turn.finish_reason = finish
                context_tokens = self.start.text_tokens + len(segment)
                if turn in s.turns and not s.closed:
                    k = s.turns.index(turn)
                    m.store.put(s.snapshot_key(Session.after(k)), Snapshot(state, None, context_tokens))
                    # Snapshots older than the last two turns only serve edits of old messages: evict them before
                    # anyone's current state (oldest first; a rebuild starts from the nearest later one kept).
                    m.store.demote([s.snapshot_key(b) for b in range(1, Session.before(k - 1))])
            now = time.perf_counter()
            decode_s = (self.t_last - self.t_first) if self.t_first is not None else 0.0
            self.stats = ReplyStats(
                ttft_s=(self.t_first - self.t0) if self.t_first is not None else now - self.t0,
                tokens_per_s=(len(tokens) - 1) / decode_s if len(tokens) > 1 and decode_s > 0 else 0.0,
                new_tokens=len(tokens),
                prefill_tokens=self.prefill_tokens,
                context_tokens=context_tokens,
                state_bytes=state.nbytes,
                finish_reason=finish,
                rebuilt_tokens=self.rebuilt_tokens,
                processed_tokens=self.rebuilt_tokens + self.prefill_tokens + max(len(tokens) - 1, 0) + len(feed),
                image_tokens=max(state.seqlen - context_tokens, 0),
                total_s=now - self.t0,
                cache_hit=self.cache_hit,
            )
        finally:
            with s.lock:
                if s.active is self:
                    s.active = None


class Reply:
    """Text deltas of one reply (see the module docstring). Iterate it, or `close()` it to stop."""

    def __init__(self, active: _ActiveReply):
        self._active = active

    def __iter__(self) -> Reply:
        return self

    def __next__(self) -> str:
        return self._active.next()

    def close(self) -> None:
        """Stop the reply now (idempotent); the partial reply is kept and saved."""
        self._active.stop()

    stop = close

    def __enter__(self) -> Reply:  # noqa: PYI034 - Reply is not subclassed
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        # No locks here (this may run inside any code): mark it; the next call on the session finishes it.
        active = getattr(self, "_active", None)
        if active is not None and not active.done:
            active.abandoned = True
            active.stop_event.set()

    @property
    def done(self) -> bool:
        return self._active.done

    @property
    def stats(self) -> ReplyStats | None:
        """Set once the reply has ended."""
        return self._active.stats

    @property
    def text(self) -> str:
        """Text streamed so far."""
        return self._active.text

    @property
    def turn_index(self) -> int:
        return self._active.turn_index


class SessionManager:
    """Conversations over one model, with cached recurrent state. See the module docstring for the API."""

    def __init__(self, cobra, *, memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET, idle_timeout_s: float = 3600.0,
                 max_context_tokens: int | None = None, max_batch: int = 8,
                 clock: Callable[[], float] = time.monotonic):
        self.cobra = cobra
        self.store = MemoryStore(memory_budget_bytes)
        self.idle_timeout_s = float(idle_timeout_s)
        self.max_context_tokens = int(max_context_tokens if max_context_tokens is not None
                                      else cobra.config.llm_max_length)
        if self.max_context_tokens < 2:
            raise ValueError(f"max_context_tokens must be >= 2, got {self.max_context_tokens}")
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self._ended: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()  # sessions dict and counters; never held while waiting for anything else
        self._model_lock = threading.RLock()  # one model call at a time
        self._step_lm = BatchedStepper(cobra.vlm.llm, max_batch=max_batch, model_lock=self._model_lock)
        self._counters = {k: 0 for k in ("hits", "misses", "rebuilds", "rebuilt_tokens", "image_encodes", "image_hits")}

    # --- public API -------------------------------------------------------------------------------------------------
    def open_session(self) -> str:
        self._sweep()
        sid = secrets.token_urlsafe(16)
        with self._lock:
            self._sessions[sid] = Session(sid, self.clock())
        return sid

    def close_session(self, sid: str) -> None:
        with self._lock:
            s = self._sessions.get(sid)
        if s is not None:
            self._end(s, "closed")

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
                self._start_snapshot(s)  # encode (or reuse) now; a bad image leaves the session as it was
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
            return self._begin_turn(s, len(s.turns), message, params, t0)

    def regenerate(self, sid: str, params: SamplingParams | None = None) -> Reply:
        params = _check_params(params)
        t0 = time.perf_counter()
        s = self._session(sid)
        with s.lock:
            self._check_idle(s)
            if not s.turns:
                raise NoSuchTurn("regenerate: no turns", "There is no reply to regenerate yet.")
            k = len(s.turns) - 1
            start, rebuilt, hit = self._resolve(s, Session.before(k))
            params, cap = self._fit(start, params)
            turn = s.turns[k]
            self.store.discard(s.snapshot_key(Session.after(k)))
            turn.reply, turn.reply_ids, turn.generated_ids, turn.finish_reason = None, [], [], None
            return self._start_reply(s, turn, start, params, cap, t0, prefill_tokens=0, rebuilt=rebuilt, hit=hit)

    def edit(self, sid: str, turn_index: int, message: str, params: SamplingParams | None = None) -> Reply:
        params = _check_params(params)
        t0 = time.perf_counter()
        s = self._session(sid)
        with s.lock:
            self._check_idle(s)
            if not (isinstance(turn_index, int) and 0 <= turn_index < len(s.turns)):
                raise NoSuchTurn(f"edit: no turn {turn_index!r} (conversation has {len(s.turns)})")
            return self._begin_turn(s, turn_index, message, params, t0)

    def undo(self, sid: str) -> None:
        s = self._session(sid)
        with s.lock:
            self._check_idle(s)
            if not s.turns:
                raise NoSuchTurn("undo: no turns", "There is nothing to undo.")
            self._truncate(s, len(s.turns) - 1)

    def reset(self, sid: str) -> None:
        s = self._session(sid)
        with s.lock:
            self._check_idle(s)
            self._truncate(s, 0)

    def stop(self, sid: str) -> None:
        s = self._session(sid)
        active = s.active
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
            start, _ = self._start_snapshot(s)
        with self._model_lock, torch.no_grad():
            logits, _ = self.cobra.vlm.prefill(self._ids_tensor(ids), None, start.state, logits_to_keep=1)
        return dict(zip(pair.words, pair.probs(logits[0, -1], self.cobra.turns)))

    def stats(self) -> dict:
        self._sweep()
        with self._lock:
            sessions = list(self._sessions.values())
            counters = dict(self._counters)
        return {
            "bytes_in_use": self.store.bytes_in_use,
            "budget_bytes": self.store.budget_bytes,
            "sessions": len(sessions),
            **{k: counters[k] for k in ("hits", "misses", "rebuilds")},
            "evictions": self.store.evictions,
            "entries": len(self.store),
            "peak_bytes": self.store.peak_bytes,
            "oversized": self.store.oversized,
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
                boundary = Session.after(len(s.turns) - 1) if s.turns else 0
            elif 0 <= turn_index < len(s.turns) and when in ("before", "after"):
                boundary = (Session.before if when == "before" else Session.after)(turn_index)
            else:
                raise NoSuchTurn(f"snapshot: no turn {turn_index!r}/{when!r} (conversation has {len(s.turns)})")
            return self._resolve(s, boundary)[0]

    def token_ids(self, sid: str) -> list[int]:
        s = self._session(sid)
        with s.lock:
            return s.text_ids()

    # --- sessions ---------------------------------------------------------------------------------------------------
    def _session(self, sid: str) -> Session:
        """The live session (touched), after expiring idle ones; finishes an abandoned reply of it first."""
        self._sweep()
        with self._lock:
            s = self._sessions.get(sid)
            if s is not None:
                s.last_used = self.clock()
        if s is None:
            raise self._not_found(sid)
        active = s.active
        if active is not None and active.abandoned:
            active.stop()
        return s

    def _not_found(self, sid: str) -> SessionNotFound:
        with self._lock:
            reason = self._ended.get(sid, "unknown")
        if reason == "expired":
            minutes = self.idle_timeout_s / 60
            idle = f"{minutes:.0f} minutes" if minutes >= 1 else f"{self.idle_timeout_s:.0f} seconds"
            msg = f"This conversation expired after {idle} without activity. Please start a new conversation."
        elif reason == "closed":
            msg = "This conversation was closed. Please start a new conversation."
        else:
            msg = "This conversation does not exist (anymore). Please start a new conversation."
        return SessionNotFound(f"session {sid[:6]}...: {reason}", msg, reason=reason)

    def _check_open(self, s: Session) -> None:
        if s.closed:
            raise self._not_found(s.sid)

    def _check_idle(self, s: Session) -> None:
        """Under s.lock: the session is live and has no reply in flight."""
        self._check_open(s)
        if s.active is not None:
            raise ReplyInProgress(f"session {s.sid[:6]}...: a reply is in flight")

    def _sweep(self) -> None:
        """Expire sessions idle for longer than the timeout."""
        now = self.clock()
        with self._lock:
            stale = [s for s in self._sessions.values() if now - s.last_used > self.idle_timeout_s]
        for s in stale:
            self._end(s, "expired")

    def _end(self, s: Session, reason: str) -> None:
        active = s.active
        if active is not None:
            active.stop()
        with s.lock:
            with self._lock:
                if self._sessions.get(s.sid) is not s:
                    return
                if reason == "expired" and self.clock() - s.last_used <= self.idle_timeout_s:
                    return  # used meanwhile
                del self._sessions[s.sid]
                self._ended[s.sid] = reason
                while len(self._ended) > MAX_ENDED_IDS:
                    self._ended.popitem(last=False)
            s.closed = True
            self._truncate(s, 0)

    def _truncate(self, s: Session, k: int) -> None:
        """Under s.lock: drop turns k.. and their snapshots."""
        for turn in s.turns[k:]:
            for when in ("before", "after"):
                self.store.discard(("snapshot", s.sid, turn.uid, when))
        del s.turns[k:]

    # --- turns ------------------------------------------------------------------------------------------------------
    def _begin_turn(self, s: Session, k: int, message: str, params: SamplingParams, t0: float) -> Reply:
        """Under s.lock, session idle: make `message` user turn k (dropping turns k..) and start its reply."""
        if not isinstance(message, str) or not clean_message(message):
            raise EmptyMessage("empty message")
        user_ids = self.cobra.turns.user_turn_ids(message, first=k == 0)
        before_tokens = sum(len(t.user_ids) + len(t.reply_ids) for t in s.turns[:k])
        if before_tokens + len(user_ids) + 2 > self.max_context_tokens:  # room for one reply token and EOS
            first_ids = user_ids if k == 0 else self.cobra.turns.user_turn_ids(message, first=True)
            if len(first_ids) + 2 > self.max_context_tokens:
                raise ContextFull(f"message of {len(first_ids)} tokens", self._too_long_message(len(first_ids)))
            raise ContextFull(
                f"context {before_tokens} + {len(user_ids)} tokens > {self.max_context_tokens}",
                f"This conversation has reached the model's context limit ({self.max_context_tokens} tokens). "
                "Please start a new conversation to continue (or undo some messages).",
            )
        base, rebuilt, hit = self._resolve(s, 2 * k)  # boundary 2k: after turn k-1 (the start when k == 0)
        with self._model_lock, torch.no_grad():
            logits, state = self.cobra.vlm.prefill(self._ids_tensor(user_ids), None, base.state, logits_to_keep=1)
        start = Snapshot(state.clone(), logits[0, -1].clone(), base.text_tokens + len(user_ids))
        params, cap = self._fit(start, params)
        self._truncate(s, k)
        turn = Turn(message, user_ids, s.new_uid())
        s.turns.append(turn)
        self.store.put(s.snapshot_key(Session.before(k)), start)
        return self._start_reply(s, turn, start, params, cap, t0, prefill_tokens=len(user_ids), rebuilt=rebuilt,
                                 hit=hit)

    def _fit(self, start: Snapshot, params: SamplingParams) -> tuple[SamplingParams, int | None]:
        """Cap max_new_tokens to the room left in the context -> (params, the cap or None)."""
        room = self.max_context_tokens - start.text_tokens - 1  # the closing EOS must fit too
        if room < 1:
            raise ContextFull(f"no room for a reply after {start.text_tokens} tokens")
        if room >= params.max_new_tokens:
            return params, None
        return dataclasses.replace(params, max_new_tokens=room), room

    def _start_reply(self, s: Session, turn: Turn, start: Snapshot, params: SamplingParams, cap: int | None,
                     t0: float, *, prefill_tokens: int, rebuilt: int, hit: bool) -> Reply:
        active = _ActiveReply(self, s, turn, start, params, t0=t0, prefill_tokens=prefill_tokens,
                              rebuilt_tokens=rebuilt, cache_hit=hit, context_cap=cap)
        s.active = active
        return Reply(active)

    def _too_long_message(self, n: int) -> str:
        return (f"Your message is too long for the model ({n} tokens; the limit is {self.max_context_tokens} "
                "tokens for a whole conversation). Please shorten it.")

    # --- state cache ------------------------------------------------------------------------------------------------
    def _ids_tensor(self, ids: list[int]) -> Tensor:
        return torch.tensor([ids], dtype=torch.long, device=self.cobra.device)

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for k, v in deltas.items():
                self._counters[k] += v

    def _embeds(self, s: Session) -> Tensor:
        """The session image's projected patch embeddings [1, P, d]: cached by content, encoded at most once while
        cached (concurrent requests for one image wait for a single encode)."""
        key = ("embeds", s.image_key)
        embeds = self.store.get(key)
        if embeds is None:
            with self._model_lock:
                embeds = self.store.get(key)
                if embeds is None:
                    embeds = self.cobra.encode_image(s.image).detach().clone()
                    self._count(image_encodes=1)
                    self.store.put(key, embeds)
                    return embeds
        self._count(image_hits=1)
        return embeds

    def _start_snapshot(self, s: Session) -> tuple[Snapshot, int]:
        """Boundary 0: the state after the image patches (cached per image, shared), or the empty state.
        Returns (snapshot, tokens read to compute it)."""
        if s.image_key is None:
            return Snapshot(None, None, 0), 0
        key = ("prefix", s.image_key)
        snap = self.store.get(key)
        if snap is not None:
            return snap, 0
        with self._model_lock:
            snap = self.store.get(key)
            if snap is not None:
                return snap, 0
            embeds = self._embeds(s)
            with torch.no_grad():
                _, state = self.cobra.vlm.llm(inputs_embeds=embeds, logits_to_keep=1)
            snap = Snapshot(state.clone(), None, 0)
            self.store.put(key, snap)
            return snap, int(embeds.shape[1])

    def _resolve(self, s: Session, boundary: int) -> tuple[Snapshot, int, bool]:
        """Under s.lock: the snapshot at `boundary` -> (snapshot, tokens re-read, cache hit). A missing snapshot is
        rebuilt from the nearest earlier cached boundary and the token history, then cached."""
        if boundary == 0:
            snap, rebuilt = self._start_snapshot(s)
            self._count(hits=int(rebuilt == 0), misses=int(rebuilt > 0), rebuilds=int(rebuilt > 0),
                        rebuilt_tokens=rebuilt)
            return snap, rebuilt, rebuilt == 0
        key = s.snapshot_key(boundary)
        snap = self.store.get(key)
        if snap is not None:
            self._count(hits=1)
            return snap, 0, True
        j, base = boundary - 1, None
        while j > 0 and (base := self.store.peek(s.snapshot_key(j))) is None:
            j -= 1
        rebuilt = 0
        if j == 0:
            base, rebuilt = self._start_snapshot(s)
        ids = [i for b in range(j + 1, boundary + 1) for i in s.segment_ids(b)]
        with self._model_lock, torch.no_grad():
            logits, state = self.cobra.vlm.prefill(self._ids_tensor(ids), None, base.state, logits_to_keep=1)
        snap = Snapshot(state.clone(), logits[0, -1].clone() if boundary % 2 else None, base.text_tokens + len(ids))
        self.store.put(key, snap)
        self._count(misses=1, rebuilds=1, rebuilt_tokens=rebuilt + len(ids))
        return snap, rebuilt + len(ids), False


__all__ = ["Reply", "ReplyStats", "SessionError", "SessionManager", "Snapshot"]
