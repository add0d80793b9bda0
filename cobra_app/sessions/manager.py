"""Conversation sessions over one loaded model: a follow-up costs only its new tokens, wherever its state was made.

    manager = SessionManager(cobra)                    # cobra: cobra_app.pipeline.Cobra (any `SessionModel`)
    sid = manager.open_session()
    manager.set_image(sid, image)                      # optional: text-only chats are allowed
    for delta in manager.send(sid, "What is in the image?", SamplingParams()):
        print(delta, end="")
    reply = manager.complete(image, [("user", "What is in the image?")])   # stateless: the whole conversation

API (thread-safe; every method may be called from any thread)
    SessionManager(cobra, *, memory_budget_bytes=2 << 30, idle_timeout_s=3600.0, max_context_tokens=None, max_batch=8,
                   clock=time.monotonic, history="release", state_dir=None, state_dir_bytes=10**10, gpu_call=None)
        max_context_tokens: limit on the conversation's *text* tokens (default `cobra.config.llm_max_length`, 2048 for
        cobra+3b); image patches are not counted. history: "release" (replies kept as the release keeps them: decoded,
        stripped, re-tokenized) or "generated" (the generated ids); see `session.py`. state_dir: a folder for the
        disk tier of the state store (None: memory only), at most state_dir_bytes of files. gpu_call: run each model
        call through this decorator (`spaces.GPU` on ZeroGPU; see `compute.py`).
    open_session() -> str                  an unguessable id (secrets.token_urlsafe)
    close_session(sid)                     stops any reply in flight, lets the session's states go first (unknown id:
                                           no-op)
    set_image(sid, image | None)           a different image starts a new conversation (the release's rule: the image
                                           patches precede all text). The same content again (or None when there is
                                           none) keeps the conversation. The image prefix is computed here.
    send(sid, message, params=None) -> Reply            reads what follows the stored state, then replies
    regenerate(sid, params=None) -> Reply               a new reply to the last message, from the state before the
                                                        old reply (no prefill)
    edit(sid, turn_index, message, params=None) -> Reply
                                           replaces user message `turn_index` (0-based), drops the exchanges after it
    undo(sid) / reset(sid)                 remove the last exchange / all of them (the image stays)
    stop(sid)                              ends the reply in flight and returns once it is saved (partial reply kept)
    history(sid) -> [(user, reply | None)] reply None while generating; a reply is shown as generated (the streamed
                                           text, not stripped; "" if stopped before a token)
    score(sid, question, answers="yes-no") -> {word: prob}
                                           closed-set probe of a single-turn question on the session's image (the
                                           conversation is untouched; a reply may be in flight)
    complete(image, messages, params=None, *, top_logprobs=None) -> Reply
                                           stateless: `messages` the whole conversation as (role, text) pairs, roles
                                           "user"/"assistant" alternating, first and last "user". Tokenized as the
                                           release builds the prompt from strings; resumes from the longest stored
                                           prefix and stores the states the next request (the same conversation plus
                                           a reply and a message) resumes from. top_logprobs: None, or k for
                                           `Reply.events()` to carry each token's logprob and the k most likely.
    conversation_ids(messages) -> list[int]    the text ids `complete` reads for those messages
    stats() -> dict                        sessions, replies_in_flight, the store's (bytes_in_use, budget_bytes,
                                           evictions, entries, peak_bytes, oversized, lookups, memory_hits,
                                           disk_hits, and with a state_dir disk_entries, disk_bytes, disk_budget_bytes,
                                           disk_writes, disk_errors, disk_dropped),
                                           hits/misses/rebuilds/rebuilt_tokens (a session turn resumed where it
                                           expected / had to re-read tokens), image_encodes, image_hits,
                                           prompt_tokens, cached_tokens (totals over replies), decode_steps,
                                           decoded_tokens (decoded_tokens > decode_steps: steps batched)
    snapshot(sid, turn_index=None, when="after") -> Snapshot     (inspection) the state at an exchange boundary
    token_ids(sid) -> list[int]            (inspection) the conversation's text ids as the model reads them
    close()                                waits for the disk tier's queued writes

Errors: subclasses of `SessionError` with a plain-words `.user_message` (`errors.py`): SessionNotFound, ReplyInProgress,
ContextFull, EmptyMessage, NoSuchTurn, BadConversation.

States live in the content-addressed `StateStore` (`keys.py`, `store.py`, `engine.py` for a reply's life): a turn
resumes from the longest stored prefix of [image, its ids], whoever stored it. Memory is one byte budget (LRU) for
embeddings and states; a reply's end demotes the session's states older than its last two exchanges (kept only for
edits of old messages), a session's end demotes all of its states: they are evicted before anyone's current state.
Nothing is lost on eviction: a state is rebuilt from the nearest stored prefix. Sessions idle for `idle_timeout_s`
expire (SessionNotFound(reason="expired")).

Concurrency: a per-session lock serialises changes to one session, and at most one reply per session is in flight
(others raise ReplyInProgress). In-process, model calls are serialised by one lock per call and concurrent decode
steps are batched (`compute.py`).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence

from PIL import Image

from cobra_app.generation import SamplingParams, get_answer_pair
from cobra_app.prompting import clean_message
from cobra_app.sessions.compute import GpuCall, ModelCalls
from cobra_app.sessions.disk import DiskTier
from cobra_app.sessions.engine import ReplyEngine, Resume
from cobra_app.sessions.errors import BadConversation, ContextFull, EmptyMessage, NoSuchTurn, ReplyInProgress
from cobra_app.sessions.keys import image_key
from cobra_app.sessions.protocol import SessionModel
from cobra_app.sessions.registry import SessionRegistry
from cobra_app.sessions.reply import Reply, ReplyEnd, ReplyRun, ReplyStats
from cobra_app.sessions.session import HISTORY_MODES, Exchange, HistoryMode, Session, When
from cobra_app.sessions.snapshot import Snapshot
from cobra_app.sessions.store import StateStore

DEFAULT_MEMORY_BUDGET = 2 << 30
DEFAULT_STATE_DIR_BYTES = 10 * 10**9


def _check_params(params: SamplingParams | None) -> SamplingParams:
    if params is None:
        return SamplingParams()
    if not isinstance(params, SamplingParams):
        raise TypeError(f"params must be SamplingParams or None, got {type(params).__name__}")
    return params


class SessionManager:
    """Conversations over one model, with stored recurrent states. See the module docstring for the API."""

    def __init__(self, cobra: SessionModel, *, memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET,
                 idle_timeout_s: float = 3600.0, max_context_tokens: int | None = None, max_batch: int = 8,
                 clock: Callable[[], float] = time.monotonic, history: HistoryMode = "release",
                 state_dir: str | os.PathLike | None = None, state_dir_bytes: int = DEFAULT_STATE_DIR_BYTES,
                 gpu_call: GpuCall | None = None):
        if history not in HISTORY_MODES:
            raise ValueError(f"history must be one of {HISTORY_MODES}, got {history!r}")
        self.cobra, self.history_mode, self.clock = cobra, history, clock
        self.max_context_tokens = int(max_context_tokens if max_context_tokens is not None
                                      else cobra.config.llm_max_length)
        if self.max_context_tokens < 2:
            raise ValueError(f"max_context_tokens must be >= 2, got {self.max_context_tokens}")
        disk = DiskTier(state_dir, state_dir_bytes) if state_dir is not None else None
        self.store = StateStore(memory_budget_bytes, disk)
        self.calls = ModelCalls(cobra, max_batch=max_batch, gpu_call=gpu_call)
        self.engine = ReplyEngine(cobra, self.calls, self.store, self.max_context_tokens)
        self.registry = SessionRegistry(idle_timeout_s, clock, on_end=self._on_end)
        self._completions: weakref.WeakSet[ReplyRun] = weakref.WeakSet()
        self._counts = {"hits": 0, "misses": 0, "rebuilds": 0, "rebuilt_tokens": 0}
        self._counts_lock = threading.Lock()

    @property
    def idle_timeout_s(self) -> float:
        return self.registry.idle_timeout_s

    # --- sessions ---------------------------------------------------------------------------------------------------
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
            self.engine.image_prefix(image, key)  # encode (or reuse) now; a bad image leaves the session as it was
            s.image, s.image_key = image, key
            s.truncate(0)
            s.saved = {0} if key is not None else set()

    def send(self, sid: str, message: str, params: SamplingParams | None = None) -> Reply:
        params, t0 = _check_params(params), time.perf_counter()
        s = self._session(sid)
        with s.lock:
            self._check_idle(s)
            return self._begin_turn(s, len(s.exchanges), message, params, t0)

    def regenerate(self, sid: str, params: SamplingParams | None = None) -> Reply:
        params, t0 = _check_params(params), time.perf_counter()
        s = self._session(sid)
        with s.lock:
            self._check_idle(s)
            if not s.exchanges:
                raise NoSuchTurn("regenerate: no turns", "There is no reply to regenerate yet.")
            exchange = s.exchanges[-1]
            prompt = s.text_ids(len(s.exchanges), with_reply=False)
            resume = self.engine.locate(s.image, s.image_key, prompt)
            params, cap = self._fit(len(prompt), params)
            exchange.reply, exchange.reply_ids, exchange.generated_ids, exchange.finish_reason = None, [], [], None
            s.saved = {p for p in s.saved if p <= len(prompt)}
            return self._start(s, exchange, resume, prompt, params, cap, t0)

    def edit(self, sid: str, turn_index: int, message: str, params: SamplingParams | None = None) -> Reply:
        params, t0 = _check_params(params), time.perf_counter()
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
            s.truncate(len(s.exchanges) - 1)

    def reset(self, sid: str) -> None:
        s = self._session(sid)
        with s.lock:
            self._check_idle(s)
            s.truncate(0)

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
            if s.closed:
                raise self.registry.not_found(s.sid)
            image, key = s.image, s.image_key
        start, _ = self.engine.image_prefix(image, key)
        snap = self.calls.read(start, ids)
        return dict(zip(pair.words, pair.probs(snap.logits, self.cobra.turns)))

    def snapshot(self, sid: str, turn_index: int | None = None, when: When = "after") -> Snapshot:
        s = self._session(sid)
        with s.lock:
            self._check_idle(s)
            if turn_index is None:
                ids = s.text_ids()
            elif 0 <= turn_index < len(s.exchanges) and when in ("before", "after"):
                ids = s.text_ids(turn_index + 1, with_reply=when == "after")
            else:
                raise NoSuchTurn(f"snapshot: no turn {turn_index!r}/{when!r} (conversation has {len(s.exchanges)})")
            return self.engine.materialize(s.image, s.image_key, ids)

    def token_ids(self, sid: str) -> list[int]:
        s = self._session(sid)
        with s.lock:
            return s.text_ids()

    # --- stateless ----------------------------------------------------------------------------------------------------
    def complete(self, image: Image.Image | None, messages: Sequence[tuple[str, str]],
                 params: SamplingParams | None = None, *, top_logprobs: int | None = None) -> Reply:
        params, t0 = _check_params(params), time.perf_counter()
        prompt = self.conversation_ids(messages)
        key = image_key(image)
        resume = self.engine.locate(image, key, prompt)
        params, cap = self._fit(len(prompt), params)

        def finish(end: ReplyEnd) -> ReplyStats:
            done = self.engine.conclude(resume, prompt, end, mode="release", cap=cap, expected=None)
            run.release_text = done.text.strip()
            return done.stats

        run = self.engine.start(resume, prompt, params, finish=finish, logprobs=top_logprobs, t0=t0)
        self._completions.add(run)
        return Reply(run)

    def conversation_ids(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        """(role, text) pairs (as `complete` takes them) -> the prompt's text ids: the prompt builder's per-turn
        strings, replies stripped, as the release builds them. BadConversation, EmptyMessage, ContextFull as
        `complete` raises them."""
        messages = list(messages)
        roles = [m[0] if isinstance(m, (tuple, list)) and len(m) == 2 else None for m in messages]
        if not messages or len(messages) % 2 == 0 or any(
                role != ("user" if i % 2 == 0 else "assistant") for i, role in enumerate(roles)):
            raise BadConversation(f"roles {roles}")
        if any(not isinstance(text, str) for _, text in messages):
            raise BadConversation("message texts must be strings", "Every message must be text.")
        if any(not clean_message(text) for role, text in messages if role == "user"):
            raise EmptyMessage("a user message is empty")
        turns, ids = self.cobra.turns, []
        for i, (role, text) in enumerate(messages):
            ids += turns.user_turn_ids(text, first=i == 0) if role == "user" else turns.assistant_turn_ids(text)
        if len(ids) + 2 > self.max_context_tokens:
            first = turns.user_turn_ids(messages[0][1], first=True)
            if len(messages) == 1 or len(first) + 2 > self.max_context_tokens:
                raise ContextFull(f"message of {len(first)} tokens", self._too_long_message(len(first)))
            raise ContextFull(f"conversation of {len(ids)} tokens", self._context_full_message())
        return ids

    # --- bookkeeping ----------------------------------------------------------------------------------------------------
    def stats(self) -> dict:
        self.registry.sweep()
        sessions = self.registry.live()
        steps, rows = self.calls.decode_counts
        in_flight = sum(s.active is not None for s in sessions) + sum(not r.done for r in list(self._completions))
        return {"sessions": len(sessions), "replies_in_flight": in_flight, **self.store.stats(), **self._counts,
                **self.engine.counts, "decode_steps": steps, "decoded_tokens": rows}

    def close(self) -> None:
        """Wait for the disk tier's queued writes (call before the process exits to keep every state)."""
        self.store.flush()

    def _count(self, **deltas: int) -> None:
        with self._counts_lock:
            for name, delta in deltas.items():
                self._counts[name] += delta

    def _session(self, sid: str) -> Session:
        """The live session (touched); finishes an abandoned reply of it first."""
        s = self.registry.get(sid)
        active = s.active
        if active is not None and active.abandoned:
            active.stop()
        return s

    def _check_idle(self, s: Session) -> None:
        """Under s.lock: the session is live and has no reply in flight."""
        if s.closed:
            raise self.registry.not_found(s.sid)
        if s.active is not None:
            raise ReplyInProgress(f"session {s.sid[:6]}...: a reply is in flight")

    def _on_end(self, s: Session) -> None:
        """Under s.lock, the session closed or expired: its states go first when memory is needed."""
        self._demote(s, len(s.read_ids()) + 1)
        s.truncate(0)

    def _demote(self, s: Session, before: int) -> None:
        """Under s.lock: demote the session's stored states at text positions < `before`."""
        keys = self.engine.keys(s.image_key, s.read_ids())
        self.store.demote([keys[p] for p in sorted(s.saved) if p < before])

    # --- turns ------------------------------------------------------------------------------------------------------
    def _begin_turn(self, s: Session, k: int, message: str, params: SamplingParams, t0: float) -> Reply:
        """Under s.lock, session idle: make `message` user turn k (dropping exchanges k..) and start its reply."""
        if not isinstance(message, str) or not clean_message(message):
            raise EmptyMessage("empty message")
        user_ids = self.cobra.turns.user_turn_ids(message, first=k == 0)
        prompt = s.text_ids(k) + user_ids
        if len(prompt) + 2 > self.max_context_tokens:  # room for one reply token and EOS
            first_ids = user_ids if k == 0 else self.cobra.turns.user_turn_ids(message, first=True)
            if len(first_ids) + 2 > self.max_context_tokens:
                raise ContextFull(f"message of {len(first_ids)} tokens", self._too_long_message(len(first_ids)))
            raise ContextFull(f"context {len(prompt) - len(user_ids)} + {len(user_ids)} tokens > "
                              f"{self.max_context_tokens}", self._context_full_message())
        resume = self.engine.locate(s.image, s.image_key, prompt)
        params, cap = self._fit(len(prompt), params)
        s.truncate(k)
        exchange = Exchange(message, user_ids)
        s.exchanges.append(exchange)
        return self._start(s, exchange, resume, prompt, params, cap, t0)

    def _fit(self, prompt_tokens: int, params: SamplingParams) -> tuple[SamplingParams, int | None]:
        """Cap max_new_tokens to the room left in the context -> (params, the cap or None)."""
        room = self.max_context_tokens - prompt_tokens - 1  # the closing EOS must fit too
        if room < 1:
            raise ContextFull(f"no room for a reply after {prompt_tokens} tokens")
        if room >= params.max_new_tokens:
            return params, None
        return dataclasses.replace(params, max_new_tokens=room), room

    def _start(self, s: Session, exchange: Exchange, resume: Resume, prompt: list[int], params: SamplingParams,
               cap: int | None, t0: float) -> Reply:
        """Under s.lock: start the reply of `exchange` to `prompt`, resuming at `resume`."""
        expected = max((p for p in s.saved if p <= len(prompt)), default=0)
        if not resume.read_image:
            s.saved.add(resume.pos)  # (maybe another conversation's) state this session now goes through

        def on_prefilled(_) -> None:
            with s.lock:
                s.saved.add(len(prompt))

        def touch() -> None:
            s.last_used = self.clock()

        def finish(end: ReplyEnd) -> ReplyStats:
            try:
                return self._finish(s, run, resume, prompt, end, cap, expected)
            finally:
                with s.lock:
                    if s.active is run:
                        s.active = None

        run = self.engine.start(resume, prompt, params, finish=finish, touch=touch, on_prefilled=on_prefilled, t0=t0,
                                exchange=exchange)
        s.active = run
        return Reply(run, lambda: s.exchanges.index(exchange) if exchange in s.exchanges else -1)

    def _finish(self, s: Session, run: ReplyRun, resume: Resume, prompt: list[int], end: ReplyEnd, cap: int | None,
                expected: int) -> ReplyStats:
        done = self.engine.conclude(resume, prompt, end, mode=self.history_mode, cap=cap, expected=expected)
        run.release_text = done.text.strip()
        stats = done.stats
        self._count(hits=int(stats.cache_hit), misses=int(not stats.cache_hit), rebuilds=int(not stats.cache_hit),
                    rebuilt_tokens=stats.rebuilt_tokens)
        with s.lock:
            exchange = run.exchange
            if end.error is not None and not end.prefilled and resume.pos < len(prompt):
                if exchange in s.exchanges:  # the message was never read: the conversation stays as it was
                    s.truncate(s.exchanges.index(exchange))
                return stats
            exchange.generated_ids, exchange.reply_ids = done.generated_ids, done.kept_ids
            exchange.reply, exchange.finish_reason = done.text, done.finish_reason
            if exchange in s.exchanges and not s.closed:
                if done.saved_at is not None:
                    s.saved.add(done.saved_at)
                # states older than the last two exchanges only serve edits of old messages: evict them first
                k = s.exchanges.index(exchange)
                self._demote(s, len(s.text_ids(max(k - 1, 0))))
        return stats

    def _too_long_message(self, n: int) -> str:
        return (f"Your message is too long for the model ({n} tokens; the limit is {self.max_context_tokens} "
                "tokens for a whole conversation). Please shorten it.")

    def _context_full_message(self) -> str:
        return (f"This conversation has reached the model's context limit ({self.max_context_tokens} tokens). "
                "Please start a new conversation to continue (or undo some messages).")
