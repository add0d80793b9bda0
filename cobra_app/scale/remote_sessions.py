"""The page's sessions when the model runs on Ray Serve (`python app.py --ray-address ...`): the `SessionManager`
methods the UI handlers call, with each conversation (image, messages, replies) kept in the page's process and each
reply one stateless `complete` call carrying the whole conversation. The deployment's router sends it to the replica
that holds the conversation's state, so a follow-up still reads only its new tokens; regenerate and edit resend the
conversation up to that message (the store has the state before the reply).

Sessions are the session layer's own (`SessionRegistry`, `Session`, `Exchange`), used at the text level: an
exchange's token ids stay empty here (the replicas hold them).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from PIL import Image

from cobra_app.generation import SamplingParams
from cobra_app.prompting import clean_message
from cobra_app.scale.messages import ModelCard
from cobra_app.sessions import EmptyMessage, Exchange, NoSuchTurn, ReplyInProgress, Session, SessionError, image_key
from cobra_app.sessions.registry import SessionRegistry

Scorer = Callable[[Image.Image | None, str, str], dict[str, float]]


class SuitesUnavailable(SessionError):
    default_user_message = ("Probe suites run the model in the page's process, and this page uses a model served on "
                            "Ray. Score suites with `python -m cobra_app probe SUITE.jsonl` where the model is.")


class RemoteReply:
    """A reply as the UI reads it: text deltas, then `.stats`; `close()`/`stop()` keep the partial reply."""

    def __init__(self, reply, session: Session, exchange: Exchange):
        self._reply, self._session, self._exchange = reply, session, exchange
        self._events = reply.events()
        self.text = ""
        self._lock = threading.Lock()
        self._done = False

    @property
    def stats(self):
        return self._reply.stats

    @property
    def turn_index(self) -> int:
        with self._session.lock:
            exchanges = self._session.exchanges
            return exchanges.index(self._exchange) if self._exchange in exchanges else -1

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        while True:
            with self._lock:
                if self._done:
                    raise StopIteration
                try:
                    event = next(self._events)
                except StopIteration:
                    self._finish()
                    raise
                except BaseException:
                    self._finish()
                    raise
            if event.text:
                self.text += event.text
                return event.text

    def _finish(self) -> None:
        """Keep the reply (whole or partial) in the conversation and free the session."""
        if self._done:
            return
        self._done = True
        with self._session.lock:
            self._exchange.reply = self.text
            if self._session.active is self:
                self._session.active = None

    def close(self) -> None:
        with self._lock:
            if not self._done:
                self._reply.close()
                self._finish()

    stop = close


class RemoteSessions:
    """Sessions of a model served elsewhere: `backend.complete` (a `RayChatBackend`) replies, `scorer` probes."""

    def __init__(self, backend, card: ModelCard, scorer: Scorer, idle_timeout_s: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic):
        self.backend, self.card, self.scorer = backend, card, scorer
        self.registry = SessionRegistry(idle_timeout_s, clock, on_end=lambda session: None)

    @property
    def cobra(self):
        raise SuitesUnavailable("probe suite with a remote model")

    def open_session(self) -> str:
        return self.registry.open().sid

    def close_session(self, sid: str) -> None:
        self.registry.close(sid)

    def _idle(self, sid: str) -> Session:
        """The session, with no reply in flight (finishing one its caller dropped)."""
        s = self.registry.get(sid)
        if s.active is not None:
            raise ReplyInProgress(f"session {sid[:6]}...: a reply is in flight")
        return s

    def set_image(self, sid: str, image: Image.Image | None) -> None:
        s = self._idle(sid)
        key = image_key(image)
        with s.lock:
            if key == s.image_key:
                return
            s.image, s.image_key = image, key
            s.exchanges.clear()

    def send(self, sid: str, message: str, params: SamplingParams | None = None) -> RemoteReply:
        s = self._idle(sid)
        return self._reply(s, len(s.exchanges), message, params)

    def regenerate(self, sid: str, params: SamplingParams | None = None) -> RemoteReply:
        s = self._idle(sid)
        if not s.exchanges:
            raise NoSuchTurn("regenerate: no turns", "There is no reply to regenerate yet.")
        return self._reply(s, len(s.exchanges) - 1, s.exchanges[-1].user, params)

    def edit(self, sid: str, turn_index: int, message: str, params: SamplingParams | None = None) -> RemoteReply:
        s = self._idle(sid)
        if not (isinstance(turn_index, int) and 0 <= turn_index < len(s.exchanges)):
            raise NoSuchTurn(f"edit: no turn {turn_index!r} (conversation has {len(s.exchanges)})")
        return self._reply(s, turn_index, message, params)

    def _reply(self, s: Session, k: int, message: str, params: SamplingParams | None) -> RemoteReply:
        """Make `message` user turn k (dropping turns k..) and start its reply."""
        if not isinstance(message, str) or not clean_message(message):
            raise EmptyMessage("empty message")
        with s.lock:
            messages = []
            for e in s.exchanges[:k]:
                messages += [("user", e.user), ("assistant", e.reply.strip())]
            messages.append(("user", message))
            reply = self.backend.complete(s.image, messages, params)  # refusals raise here, the session untouched
            del s.exchanges[k:]
            exchange = Exchange(message, [])
            s.exchanges.append(exchange)
            s.active = RemoteReply(reply, s, exchange)
            return s.active

    def undo(self, sid: str) -> None:
        s = self._idle(sid)
        with s.lock:
            if not s.exchanges:
                raise NoSuchTurn("undo: no turns", "There is nothing to undo.")
            s.exchanges.pop()

    def reset(self, sid: str) -> None:
        s = self._idle(sid)
        with s.lock:
            s.exchanges.clear()

    def stop(self, sid: str) -> None:
        active = self.registry.get(sid).active
        if active is not None:
            active.stop()

    def history(self, sid: str) -> list[tuple[str, str | None]]:
        s = self.registry.get(sid)
        with s.lock:
            return s.history()

    def score(self, sid: str, question: str, answers: str = "yes-no") -> dict[str, float]:
        s = self.registry.get(sid)
        if not clean_message(question):
            raise EmptyMessage("score: empty question")
        return self.scorer(s.image, question, answers)

    def stats(self) -> dict:
        self.registry.sweep()
        live = self.registry.live()
        return {"sessions": len(live), "replies_in_flight": sum(s.active is not None for s in live)}
