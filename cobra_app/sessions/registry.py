"""The session registry: live sessions by id, their idle expiry, and why an id that is gone went away.

The registry owns only the bookkeeping of ids; what ending a session means for its state (stopping its reply, letting
its cached states go) is the `on_end` callback the manager gives it.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable

from cobra_app.sessions.errors import SessionNotFound
from cobra_app.sessions.session import Session

MAX_ENDED_IDS = 10_000  # closed/expired ids remembered to say why they are gone


class SessionRegistry:
    """Sessions by unguessable id (secrets.token_urlsafe). Thread-safe; the lock is never held while calling out.

    idle_timeout_s: a session unused for longer (by `clock`) expires at the next `sweep` (every lookup sweeps).
    on_end(session): called once when a session is closed or expires, without the registry's lock held.
    """

    def __init__(self, idle_timeout_s: float, clock: Callable[[], float], on_end: Callable[[Session], None]):
        self.idle_timeout_s, self.clock, self.on_end = float(idle_timeout_s), clock, on_end
        self._sessions: dict[str, Session] = {}
        self._ended: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def open(self) -> Session:
        self.sweep()
        session = Session(secrets.token_urlsafe(16), self.clock())
        with self._lock:
            self._sessions[session.sid] = session
        return session

    def get(self, sid: str) -> Session:
        """The live session, marked as used now (expiring idle ones first); SessionNotFound if there is none."""
        self.sweep()
        with self._lock:
            session = self._sessions.get(sid)
            if session is not None:
                session.last_used = self.clock()
        if session is None:
            raise self.not_found(sid)
        return session

    def peek(self, sid: str) -> Session | None:
        """The live session or None, without touching it."""
        with self._lock:
            return self._sessions.get(sid)

    def live(self) -> list[Session]:
        with self._lock:
            return list(self._sessions.values())

    def close(self, sid: str) -> None:
        session = self.peek(sid)
        if session is not None:
            self.end(session, "closed")

    def sweep(self) -> None:
        """Expire sessions idle for longer than the timeout."""
        now = self.clock()
        with self._lock:
            stale = [s for s in self._sessions.values() if now - s.last_used > self.idle_timeout_s]
        for session in stale:
            self.end(session, "expired")

    def end(self, session: Session, reason: str) -> None:
        """Remove `session` ("closed" or "expired": an expiry is skipped if it was used meanwhile) and call on_end."""
        active = session.active
        if active is not None:
            active.stop()
        with session.lock:
            with self._lock:
                if self._sessions.get(session.sid) is not session:
                    return
                if reason == "expired" and self.clock() - session.last_used <= self.idle_timeout_s:
                    return
                del self._sessions[session.sid]
                self._ended[session.sid] = reason
                while len(self._ended) > MAX_ENDED_IDS:
                    self._ended.popitem(last=False)
            session.closed = True
            self.on_end(session)

    def not_found(self, sid: str) -> SessionNotFound:
        """The error for an id that is not live, saying in plain words whether it was closed, expired or unknown."""
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
