"""What the UI's buttons do, as plain Python: no Gradio components here, so everything is unit-testable.

The conversation itself lives in the `SessionManager` (the source of truth); each browser tab (and each API client)
holds only its session id, in a `gr.State` on the server. The chat shown is re-rendered from the manager's history
after every action (`chat_view`), plus the speed line of each reply, kept here per session.

Errors never escape as tracebacks: every failure becomes a notice in plain words (`Notifier.warning`), and the
outputs are left as they were, so nothing typed is lost (a message whose reply failed goes back into the textbox).
Refusals (`REFUSALS`: their `.user_message` is the notice) and unexpected errors become notices in one place,
`ChatHandlers.attempt`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cobra_app.generation import SamplingParams
from cobra_app.images import DEFAULT_LIMITS, ImageLimits, ImageRejected, open_image
from cobra_app.prompting import clean_text
from cobra_app.sessions import SessionError, SessionManager, SessionNotFound
from cobra_app.ui.chat_view import Message, format_speed, message_text, render_chat, user_turn_index
from cobra_app.ui.params import (
    DEFAULT_PARAM_LIMITS,
    DEFAULT_PARAMS,
    BadParams,
    ParamLimits,
    ParamValues,
    make_params,
    number,
)
from cobra_app.ui.probe_suite import SuiteResult, SuiteUploadError, run_uploaded_suite

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_TRACKED_SESSIONS = 100_000
# Seconds between chat updates while a reply streams (its first text is shown at once). The page re-renders the whole
# reply at each update; one per token flooded a busy browser, which then sent a Stop click seconds late.
STREAM_EVERY_S = 0.1
REFUSALS = (SessionError, BadParams, ImageRejected, SuiteUploadError)  # their `.user_message` is the notice


class Notifier:
    """Shows notices. The UI passes one that calls gr.Warning / gr.Info; tests record them."""

    def warning(self, message: str) -> None:
        log.warning("notice: %s", message)

    def info(self, message: str) -> None:
        log.info("notice: %s", message)


def image_path(value) -> str | None:
    """The image input's raw value -> the uploaded file's path. Events that read the image skip Gradio's
    preprocessing, which would decode it (failing with a bare "Error" on a corrupt file); Gradio has already checked
    the file and moved it into its cache by then. (Gradio 6 uploads every image, webcam and clipboard included, as a
    file: there is no inline data to decode.)"""
    if isinstance(value, dict):
        value = value.get("path")
    return str(value) if value else None


@dataclass
class _TabData:
    speeds: list[str | None] = field(default_factory=list)
    image_file: tuple | None = None  # (path, size, mtime) of the image last set, to skip re-decoding it
    refused: tuple | None = None  # the file last refused (Gradio reports one upload as two changes: warn once)
    image_lock: threading.Lock = field(default_factory=threading.Lock)  # those two changes may run at once


class ChatHandlers:
    """Every UI action. Methods take plain values (the session id first) and return plain values; generators yield
    successive outputs while a reply streams."""

    def __init__(self, manager: SessionManager, *, image_limits: ImageLimits = DEFAULT_LIMITS,
                 param_limits: ParamLimits = DEFAULT_PARAM_LIMITS, notifier: Notifier | None = None,
                 stream_every_s: float = STREAM_EVERY_S):
        self.manager = manager
        self.stream_every_s = stream_every_s
        self.image_limits = image_limits
        self.param_limits = param_limits
        self.notify = notifier or Notifier()
        self._tabs: OrderedDict[str, _TabData] = OrderedDict()
        self._by_browser: OrderedDict[str, str] = OrderedDict()  # Gradio session hash -> sid, closed on page unload
        self._lock = threading.Lock()

    def attempt(self, action: Callable[[], T], failure: str | None = None) -> T | None:
        """`action()`, or None after a notice: a refusal's own words, or `failure` for any other error (logged with
        its traceback, never shown). Without `failure` other errors propagate. An action returns None itself only
        when it has refused and said so already."""
        try:
            return action()
        except REFUSALS as exc:
            self.notify.warning(exc.user_message)
        except Exception:
            if failure is None:
                raise
            log.exception("%s", failure)
            self.notify.warning(failure)
        return None

    # --- session bookkeeping ------------------------------------------------------------------------------------------
    def _tab(self, sid: str) -> _TabData:
        with self._lock:
            tab = self._tabs.get(sid)
            if tab is None:
                tab = self._tabs[sid] = _TabData()
                while len(self._tabs) > MAX_TRACKED_SESSIONS:
                    self._tabs.popitem(last=False)
            self._tabs.move_to_end(sid)
            return tab

    def open_tab(self, browser_id: str | None = None) -> str:
        """A new session for a browser tab (or API client); `browser_id` (Gradio's session hash) closes it on unload."""
        sid = self.manager.open_session()
        self._tab(sid)
        if browser_id:
            with self._lock:
                old = self._by_browser.pop(browser_id, None)
                self._by_browser[browser_id] = sid
                while len(self._by_browser) > MAX_TRACKED_SESSIONS:  # API clients never unload: forget the oldest
                    self._by_browser.popitem(last=False)
            if old and old != sid:
                self.close(old)
        return sid

    def close(self, sid: str | None) -> None:
        """Close a session (idempotent, never raises)."""
        if not sid:
            return
        with self._lock:
            self._tabs.pop(sid, None)
        try:
            self.manager.close_session(sid)
        except Exception:  # closing must never fail a page unload
            log.exception("closing session failed")

    def close_browser(self, browser_id: str | None) -> None:
        """Page unload: close the tab's session."""
        with self._lock:
            sid = self._by_browser.pop(browser_id, None) if browser_id else None
        if sid:
            self.close(sid)
            stats = self.manager.stats()  # a page in front of Ray Serve has no state store of its own
            store = f"; state store {stats['bytes_in_use']} of {stats['budget_bytes']} bytes" if "bytes_in_use" in stats \
                else ""
            log.info("browser tab gone: its session is closed (%d open%s)", stats["sessions"], store)

    def ensure(self, sid: str | None, browser_id: str | None = None) -> str:
        """The tab's live session id: opens one when there is none yet or it has ended (then says so)."""
        if sid:
            try:
                self.manager.history(sid)
                return sid
            except SessionNotFound as exc:
                self.notify.warning(exc.user_message.replace("Please start a new conversation.",
                                                             "A new conversation has been started."))
                self.close(sid)
        return self.open_tab(browser_id)

    def _speeds(self, sid: str) -> list[str | None]:
        return self._tab(sid).speeds

    def _chat(self, sid: str, partial: str | None = None) -> list[Message]:
        try:
            history = self.manager.history(sid)
        except SessionError:  # ended meanwhile (closed, expired): the next action starts a new one
            return []
        speeds = self._speeds(sid)
        del speeds[len(history):]
        return render_chat(history, speeds, partial)

    # --- image ------------------------------------------------------------------------------------------------------
    def _apply_image(self, sid: str, image_path: str | None, interrupt: bool = False, from_input: bool = False) -> bool:
        """Make `image_path` the session's image (a different image starts a new conversation; `interrupt`: stop a
        reply in flight first). False (after a notice) when the file is refused; `from_input`: the image input's
        change event, which fires twice per upload, so a refusal repeated at once is not announced again. One image
        change at a time per tab: the two events may run at once (two workers), and both would warn."""
        tab = self._tab(sid)
        with tab.image_lock:
            return self._apply_image_locked(tab, sid, image_path, interrupt, from_input)

    def _apply_image_locked(self, tab: _TabData, sid: str, image_path: str | None, interrupt: bool,
                            from_input: bool) -> bool:
        if image_path is None:
            if interrupt:
                self.manager.stop(sid)
            self.manager.set_image(sid, None)
            tab.image_file = None
            return True
        path = Path(image_path)
        try:
            st = path.stat()
            fingerprint = (str(path), st.st_size, st.st_mtime_ns)
        except OSError:
            fingerprint = None
        if fingerprint is not None and fingerprint == tab.image_file:
            return True
        try:
            image = open_image(path, self.image_limits)
        except ImageRejected as exc:
            log.info("image refused: %s", exc)
            if not from_input or fingerprint is None or fingerprint != tab.refused:
                self.notify.warning(exc.user_message)
            tab.refused = fingerprint
            return False
        tab.refused = None
        if interrupt:
            self.manager.stop(sid)
        self.manager.set_image(sid, image)
        tab.image_file = fingerprint
        return True

    def set_image(self, image_path: str | None, sid: str | None, browser_id: str | None = None):
        """The image input changed. Returns (sid, chat, image to show): a refused file is replaced by the previous
        image, and the conversation is kept."""
        sid = self.ensure(sid, browser_id)
        tab = self._tab(sid)
        previous = tab.image_file[0] if tab.image_file else None
        had_chat = bool(self.manager.history(sid))
        accepted = self.attempt(lambda: self._apply_image(sid, image_path, interrupt=True, from_input=True),
                                failure="Cobra could not process this image. Please try another one.")
        if not accepted:
            return sid, self._chat(sid), previous
        if had_chat and not self.manager.history(sid):
            self.notify.info("New image: a new conversation has started.")
        return sid, self._chat(sid), image_path

    # --- replies ----------------------------------------------------------------------------------------------------
    def _sampling(self, values: ParamValues) -> SamplingParams:
        """Checked parameters (BadParams refuses); values clamped into range are told as info notes."""
        params, notes = make_params(values, limits=self.param_limits)
        for note in notes:
            self.notify.info(note)
        return params

    def _stream(self, sid: str, start, restore: str) -> Iterator[tuple[str, list[Message], str]]:
        """Run `start()` -> Reply (None: refused, already told) and stream it. Yields (sid, chat, textbox): the reply's
        first text at once, then at most one update per `stream_every_s`, then the finished chat. On failure the textbox
        gets `restore`."""
        reply = self.attempt(start, failure="Cobra failed to start a reply (a model error). Please try again.")
        if reply is None:
            yield sid, self._chat(sid), restore
            return
        speeds = self._speeds(sid)
        text, shown_at = "", None
        try:
            yield sid, self._chat(sid, partial=""), ""
            for delta in reply:
                text += delta
                if shown_at is None or time.monotonic() - shown_at >= self.stream_every_s:
                    shown_at = time.monotonic()
                    yield sid, self._chat(sid, partial=text), ""
        except Exception:
            log.exception("a reply failed")
            self.notify.warning("Cobra failed while answering (a model error). The reply so far is kept; you can "
                                "regenerate it or send your message again.")
            yield sid, self._chat(sid), restore
            return
        finally:
            reply.close()  # a client gone mid-stream: end and save the reply now
        stats = reply.stats
        turn = reply.turn_index
        if stats is not None and turn >= 0:
            del speeds[turn:]
            speeds.extend([None] * (turn - len(speeds)))
            speeds.append(format_speed(stats))
            if stats.finish_reason == "context":
                self.notify.warning("The conversation has reached the model's context limit. Clear the chat (or "
                                    "undo some messages) to continue.")
        yield sid, self._chat(sid), ""

    def send(self, image_path: str | None, message: str, sid: str | None, params: ParamValues = DEFAULT_PARAMS,
             browser_id: str | None = None) -> Iterator[tuple[str, list[Message], str]]:
        """Send a message about the image. Yields (sid, chat, textbox) as the reply streams in."""
        sid = self.ensure(sid, browser_id)
        message = "" if message is None else str(message)
        text = clean_text(message)  # what the model reads and the chat shows; the textbox keeps `message` on failure
        if not text.strip():
            self.notify.warning("Please type a message first.")
            yield sid, self._chat(sid), message
            return
        if not image_path:
            self.notify.warning("Please add an image first: upload one, paste one, use the webcam or pick an "
                                "example.")
            yield sid, self._chat(sid), message
            return

        def start():
            sampling = self._sampling(params)
            return self.manager.send(sid, text, sampling) if self._apply_image(sid, image_path) else None

        yield from self._stream(sid, start, message)

    def regenerate(self, sid: str | None, params: ParamValues = DEFAULT_PARAMS, browser_id: str | None = None):
        """A new reply to the last message. Yields (sid, chat)."""
        sid = self.ensure(sid, browser_id)
        for _, chat, _ in self._stream(sid, lambda: self.manager.regenerate(sid, self._sampling(params)), ""):
            yield sid, chat

    def edit(self, message_index: int, new_text, sid: str | None, params: ParamValues = DEFAULT_PARAMS,
             browser_id: str | None = None):
        """A user message was edited in the chat (`message_index`: its position among the chat's messages)."""
        sid = self.ensure(sid, browser_id)
        turn = user_turn_index(self._chat(sid), message_index) if isinstance(message_index, int) else None
        if turn is None:
            self.notify.warning("Only your own messages can be edited.")
            yield sid, self._chat(sid)
            return
        yield from self.edit_turn(turn, new_text, sid, params, browser_id=browser_id)

    def edit_turn(self, turn, new_text, sid: str | None, params: ParamValues = DEFAULT_PARAMS,
                  browser_id: str | None = None):
        """Replace user message `turn` (0-based), drop what followed it and reply anew. Yields (sid, chat)."""
        sid = self.ensure(sid, browser_id)
        new_text = clean_text(message_text(new_text))
        turn = self.attempt(lambda: int(number("The message number", turn, integer=True)))
        if turn is None:
            yield sid, self._chat(sid)
            return
        if not new_text.strip():
            self.notify.warning("An edited message cannot be empty. Use Undo to remove the last exchange.")
            yield sid, self._chat(sid)
            return
        for _, chat, _ in self._stream(sid, lambda: self.manager.edit(sid, turn, new_text, self._sampling(params)),
                                       ""):
            yield sid, chat

    def stop(self, sid: str | None) -> None:
        """End the reply in flight, if any (a session that has ended has nothing to stop)."""
        if sid:
            with contextlib.suppress(SessionError):
                self.manager.stop(sid)

    def undo(self, sid: str | None, textbox: str | None = None, browser_id: str | None = None):
        """Remove the last exchange; its message goes back into the textbox when that is empty.
        Returns (sid, chat, textbox)."""
        sid = self.ensure(sid, browser_id)
        textbox = textbox or ""

        def undo_last() -> str:
            history = self.manager.history(sid)
            self.manager.undo(sid)  # NoSuchTurn when there is nothing to undo
            return history[-1][0]

        undone = self.attempt(undo_last)
        if undone is not None and not textbox.strip():
            textbox = undone
        return sid, self._chat(sid), textbox

    def clear(self, sid: str | None, browser_id: str | None = None):
        """Clear the conversation (the image stays). Returns (sid, chat)."""
        sid = self.ensure(sid, browser_id)

        def stop_and_reset() -> bool:
            self.manager.stop(sid)
            self.manager.reset(sid)
            return True

        self.attempt(stop_and_reset)
        return sid, self._chat(sid)

    # --- probes -----------------------------------------------------------------------------------------------------
    def probe(self, image_path: str | None, question: str | None, sid: str | None, browser_id: str | None = None):
        """P(Yes)/P(No) for a question about the current image. Returns (sid, {"Yes": p, "No": q} or None, text)."""
        sid = self.ensure(sid, browser_id)
        question = clean_text("" if question is None else str(question))
        if not question.strip():
            self.notify.warning("Please type a yes/no question to probe.")
            return sid, None, ""
        if not image_path:
            self.notify.warning("Please add an image first: the probe asks about the current image.")
            return sid, None, ""
        probs = self.attempt(lambda: self.manager.score(sid, question, "yes-no")
                             if self._apply_image(sid, image_path) else None,
                             failure="Cobra failed to score this question (a model error). Please try again.")
        if probs is None:
            return sid, None, ""
        probs = {k: float(v) for k, v in probs.items()}
        text = " · ".join(f"P({k}) = {v:.4f}" for k, v in probs.items())
        return sid, probs, text

    def run_suite(self, files: Sequence[str | Path], out_root: Path, max_cases: int,
                  progress: Callable[[int, int], None] | None = None) -> SuiteResult | None:
        """Score an uploaded probe suite (the Probe suite tab); None after a notice when it cannot be scored."""
        return self.attempt(lambda: run_uploaded_suite(self.manager.cobra, files, out_root,
                                                       image_limits=self.image_limits, max_cases=max_cases,
                                                       progress=progress),
                            failure="The suite could not be scored (a model error). Please try again.")
