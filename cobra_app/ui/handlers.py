"""What the UI's buttons do, as plain Python: no Gradio components here, so everything is unit-testable.

The conversation itself lives in the `SessionManager` (the source of truth); each browser tab (and each API client)
holds only its session id, in a `gr.State` on the server. The chat shown is re-rendered from the manager's history
after every action, plus the speed line of each reply, kept here per session.

Errors never escape as tracebacks: every failure becomes a notice in plain words (`Notifier.warning`), and the
outputs are left as they were, so nothing typed is lost (a message whose reply failed goes back into the textbox).

Chat values follow Gradio's messages format: [{"role": "user" | "assistant", "content": str, "metadata": {...}}].
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cobra_app.generation import SamplingParams
from cobra_app.sessions import ReplyStats, SessionError, SessionManager, SessionNotFound
from cobra_app.ui.images import DEFAULT_LIMITS, ImageLimits, ImageRejected, open_image

log = logging.getLogger(__name__)

Message = dict
SPEED_CLASS = "speed-line"  # metadata title prefix marks the speed line under a reply
EMPTY_REPLY = "(no answer: the reply was stopped before its first word)"
MAX_TRACKED_SESSIONS = 100_000


class Notifier:
    """Shows notices. The UI passes one that calls gr.Warning / gr.Info; tests record them."""

    def warning(self, message: str) -> None:
        log.warning("notice: %s", message)

    def info(self, message: str) -> None:
        log.info("notice: %s", message)


class RecordingNotifier(Notifier):
    def __init__(self):
        self.warnings: list[str] = []
        self.infos: list[str] = []

    def warning(self, message: str) -> None:
        self.warnings.append(message)

    def info(self, message: str) -> None:
        self.infos.append(message)


# --- formatting -----------------------------------------------------------------------------------------------------
def format_bytes(n: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{n} B"


def format_count(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


FINISH_NOTES = {"length": "stopped at the max new tokens limit", "stopped": "stopped", "context": "context full",
                "error": "failed"}


def format_speed(stats: ReplyStats) -> str:
    """One line: time to first token, tokens/s, what this turn read, tokens in context, the (constant) state size."""
    parts = [f"⚡ {stats.ttft_s:.2f} s to first token"]
    if stats.new_tokens > 1:
        parts.append(f"{stats.tokens_per_s:.1f} tokens/s")
    parts.append(f"{stats.new_tokens} new tokens")
    read = f"read {stats.prefill_tokens} new prompt tokens" if stats.prefill_tokens else "no prompt re-read"
    if stats.rebuilt_tokens:
        read += f" (+{stats.rebuilt_tokens} rebuilt)"
    parts.append(read)
    parts.append(f"{stats.context_tokens} tokens in context")
    parts.append(f"state {format_bytes(stats.state_bytes)} (constant)")
    if stats.finish_reason in FINISH_NOTES:
        parts.append(FINISH_NOTES[stats.finish_reason])
    return " · ".join(parts)


def speed_message(line: str) -> Message:
    return {"role": "assistant", "content": "", "metadata": {"title": line, "status": "done"}}


def render_chat(history: list[tuple[str, str | None]], speeds: list[str | None] | None = None,
                partial: str | None = None) -> list[Message]:
    """The manager's history -> chat messages. A reply of None (in flight) shows `partial`; each finished reply is
    followed by its speed line when known."""
    speeds = speeds or []
    messages: list[Message] = []
    for i, (user, reply) in enumerate(history):
        messages.append({"role": "user", "content": user})
        if reply is None:
            if partial is not None:
                messages.append({"role": "assistant", "content": partial})
            continue
        messages.append({"role": "assistant", "content": reply if reply.strip() else EMPTY_REPLY})
        if i < len(speeds) and speeds[i]:
            messages.append(speed_message(speeds[i]))
    return messages


def image_path(value) -> str | None:
    """The image input's raw value -> the uploaded file's path. Events that read the image skip Gradio's
    preprocessing, which would decode it (failing with a bare "Error" on a corrupt file); Gradio has already checked
    the file and moved it into its cache by then. (Gradio 6 uploads every image, webcam and clipboard included, as a
    file: there is no inline data to decode.)"""
    if isinstance(value, dict):
        value = value.get("path")
    return str(value) if value else None


def clean_text(text) -> str:
    """Typed text -> valid Unicode: surrogate pairs sent as two code points (JSON's "\\ud83d\\ude00") are joined,
    unpaired surrogates (which no tokenizer or UTF-8 encoder accepts) become U+FFFD. Everything else is kept as typed."""
    text = "" if text is None else str(text)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def user_turn_index(messages: list[Message], message_index: int) -> int | None:
    """Position in the chat -> the 0-based turn of that user message (None if it is not a user message)."""
    if not 0 <= message_index < len(messages) or messages[message_index].get("role") != "user":
        return None
    return sum(1 for m in messages[:message_index] if m.get("role") == "user")


def message_text(content) -> str:
    """Text of a chat message's content in any of Gradio's shapes (str, [{"type": "text", "text": ...}], dict)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("value") or "")
    if isinstance(content, (list, tuple)):
        return "".join(message_text(part) for part in content)
    return str(content)


def model_info_markdown(info: dict, requested: str | None = None) -> str:
    rows = [("Model", f"`{info['model_id']}`"), ("Loaded from", f"`{info['source']}`"),
            ("Device", f"`{info['device']}`"), ("Weights dtype", f"`{info['dtype']}`"),
            ("Parameters", f"{format_count(int(info['parameters']))} ({int(info['parameters']):,})"),
            ("Mamba ops", f"`{info['ops']}`"),
            ("Conversation state", f"{format_bytes(int(info['state_bytes']))}, whatever the conversation's length")]
    if requested and requested != info["source"]:
        rows.insert(1, ("Requested", f"`{requested}` (unavailable)"))
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


# --- parameters -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParamLimits:
    max_new_tokens: int = 512
    temperature: tuple[float, float] = (0.01, 5.0)
    top_p: tuple[float, float] = (0.01, 1.0)
    top_k: tuple[int, int] = (0, 1000)
    repetition_penalty: tuple[float, float] = (0.5, 3.0)


DEFAULT_PARAM_LIMITS = ParamLimits()


class BadParams(ValueError):
    def __init__(self, user_message: str):
        self.user_message = user_message
        super().__init__(user_message)


def _number(name: str, value, integer: bool = False) -> float:
    if isinstance(value, bool) or value is None or value == "":
        raise BadParams(f"{name} must be a number.")
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float (an API client can send 10**400)
        raise BadParams(f"{name} must be a finite number.") from None
    except (TypeError, ValueError):
        raise BadParams(f"{name} must be a number, not {str(value)[:20]!r}.") from None
    if not math.isfinite(number):
        raise BadParams(f"{name} must be a finite number.")
    return float(round(number)) if integer else number


def make_params(max_new_tokens, temperature, top_p, top_k, repetition_penalty, greedy,
                limits: ParamLimits = DEFAULT_PARAM_LIMITS) -> tuple[SamplingParams, list[str]]:
    """UI/API values -> (SamplingParams, notes on values clamped into range). Non-numbers raise BadParams."""
    notes: list[str] = []

    def clamp(label: str, value: float, lo: float, hi: float) -> float:
        if value < lo or value > hi:
            fixed = min(max(value, lo), hi)
            notes.append(f"{label} {value:g} is out of range; using {fixed:g}.")
            return fixed
        return value

    new_tokens = int(clamp("Max new tokens", _number("Max new tokens", max_new_tokens, True), 1, limits.max_new_tokens))
    params = SamplingParams(
        max_new_tokens=new_tokens,
        greedy=bool(greedy) if not isinstance(greedy, str) else greedy.strip().lower() in ("1", "true", "yes", "on"),
        temperature=clamp("Temperature", _number("Temperature", temperature), *limits.temperature),
        top_p=clamp("Top-p", _number("Top-p", top_p), *limits.top_p),
        top_k=int(clamp("Top-k", _number("Top-k", top_k, True), *limits.top_k)),
        repetition_penalty=clamp("Repetition penalty", _number("Repetition penalty", repetition_penalty),
                                 *limits.repetition_penalty),
    )
    return params, notes


# --- the handlers ---------------------------------------------------------------------------------------------------
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
                 param_limits: ParamLimits = DEFAULT_PARAM_LIMITS, notifier: Notifier | None = None):
        self.manager = manager
        self.image_limits = image_limits
        self.param_limits = param_limits
        self.notify = notifier or Notifier()
        self._tabs: OrderedDict[str, _TabData] = OrderedDict()
        self._by_browser: OrderedDict[str, str] = OrderedDict()  # Gradio session hash -> sid, closed on page unload
        self._lock = threading.Lock()

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
            log.info("browser tab gone: its session is closed (%d open)", self.manager.stats()["sessions"])

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
        try:
            if not self._apply_image(sid, image_path, interrupt=True, from_input=True):
                return sid, self._chat(sid), previous
        except SessionError as exc:
            self.notify.warning(exc.user_message)
            return sid, self._chat(sid), previous
        except Exception:
            log.exception("set_image failed")
            self.notify.warning("Cobra could not process this image. Please try another one.")
            return sid, self._chat(sid), previous
        if had_chat and not self.manager.history(sid):
            self.notify.info("New image: a new conversation has started.")
        return sid, self._chat(sid), image_path

    # --- replies ----------------------------------------------------------------------------------------------------
    def _params(self, values) -> SamplingParams | None:
        try:
            params, notes = make_params(*values, limits=self.param_limits)
        except BadParams as exc:
            self.notify.warning(exc.user_message)
            return None
        for note in notes:
            self.notify.info(note)
        return params

    def _stream(self, sid: str, start, restore: str) -> Iterator[tuple[str, list[Message], str]]:
        """Run `start()` -> Reply and stream it. Yields (sid, chat, textbox). On failure the textbox gets `restore`."""
        try:
            reply = start()
        except SessionError as exc:
            self.notify.warning(exc.user_message)
            yield sid, self._chat(sid), restore
            return
        except Exception:
            log.exception("starting a reply failed")
            self.notify.warning("Cobra failed to start a reply (a model error). Please try again.")
            yield sid, self._chat(sid), restore
            return
        speeds = self._speeds(sid)
        text = ""
        try:
            yield sid, self._chat(sid, partial=""), ""
            for delta in reply:
                text += delta
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

    def send(self, image_path: str | None, message: str, sid: str | None, *param_values,
             browser_id: str | None = None) -> Iterator[tuple[str, list[Message], str]]:
        """Send a message about the image. Yields (sid, chat, textbox) as the reply streams in."""
        sid = self.ensure(sid, browser_id)
        message = "" if message is None else str(message)
        text = clean_text(message)  # what the model reads; the textbox keeps `message` as typed on failure
        if not message.strip():
            self.notify.warning("Please type a message first.")
            yield sid, self._chat(sid), message
            return
        if not image_path:
            self.notify.warning("Please add an image first: upload one, paste one, use the webcam or pick an "
                                "example.")
            yield sid, self._chat(sid), message
            return
        params = self._params(param_values)
        if params is None:
            yield sid, self._chat(sid), message
            return
        try:
            if not self._apply_image(sid, image_path):
                yield sid, self._chat(sid), message
                return
        except SessionError as exc:
            self.notify.warning(exc.user_message)
            yield sid, self._chat(sid), message
            return
        yield from self._stream(sid, lambda: self.manager.send(sid, text, params), message)

    def regenerate(self, sid: str | None, *param_values, browser_id: str | None = None):
        """A new reply to the last message. Yields (sid, chat)."""
        sid = self.ensure(sid, browser_id)
        params = self._params(param_values)
        if params is None:
            yield sid, self._chat(sid)
            return
        for _, chat, _ in self._stream(sid, lambda: self.manager.regenerate(sid, params), ""):
            yield sid, chat

    def edit(self, message_index: int, new_text, sid: str | None, *param_values, browser_id: str | None = None):
        """A user message was edited in the chat (`message_index`: its position among the chat's messages)."""
        sid = self.ensure(sid, browser_id)
        turn = user_turn_index(self._chat(sid), message_index) if isinstance(message_index, int) else None
        if turn is None:
            self.notify.warning("Only your own messages can be edited.")
            yield sid, self._chat(sid)
            return
        yield from self.edit_turn(turn, new_text, sid, *param_values, browser_id=browser_id)

    def edit_turn(self, turn, new_text, sid: str | None, *param_values, browser_id: str | None = None):
        """Replace user message `turn` (0-based), drop what followed it and reply anew. Yields (sid, chat)."""
        sid = self.ensure(sid, browser_id)
        new_text = clean_text(message_text(new_text))
        try:
            turn = int(_number("The message number", turn, integer=True))
        except BadParams as exc:
            self.notify.warning(exc.user_message)
            yield sid, self._chat(sid)
            return
        if not new_text.strip():
            self.notify.warning("An edited message cannot be empty. Use Undo to remove the last exchange.")
            yield sid, self._chat(sid)
            return
        params = self._params(param_values)
        if params is None:
            yield sid, self._chat(sid)
            return
        for _, chat, _ in self._stream(sid, lambda: self.manager.edit(sid, turn, new_text, params), ""):
            yield sid, chat

    def stop(self, sid: str | None) -> None:
        if not sid:
            return
        try:
            self.manager.stop(sid)
        except SessionError:
            pass

    def undo(self, sid: str | None, textbox: str | None = None, browser_id: str | None = None):
        """Remove the last exchange; its message goes back into the textbox when that is empty.
        Returns (sid, chat, textbox)."""
        sid = self.ensure(sid, browser_id)
        textbox = textbox or ""
        try:
            history = self.manager.history(sid)
            self.manager.undo(sid)
        except SessionError as exc:
            self.notify.warning(exc.user_message)
            return sid, self._chat(sid), textbox
        if not textbox.strip() and history:
            textbox = history[-1][0]
        return sid, self._chat(sid), textbox

    def clear(self, sid: str | None, browser_id: str | None = None):
        """Clear the conversation (the image stays). Returns (sid, chat)."""
        sid = self.ensure(sid, browser_id)
        try:
            self.manager.stop(sid)
            self.manager.reset(sid)
        except SessionError as exc:
            self.notify.warning(exc.user_message)
        return sid, self._chat(sid)

    # --- probe ------------------------------------------------------------------------------------------------------
    def probe(self, image_path: str | None, question: str | None, sid: str | None, browser_id: str | None = None):
        """P(Yes)/P(No) for a question about the current image. Returns (sid, {"Yes": p, "No": q} or None, text)."""
        sid = self.ensure(sid, browser_id)
        question = clean_text(question)
        if not question.strip():
            self.notify.warning("Please type a yes/no question to probe.")
            return sid, None, ""
        if not image_path:
            self.notify.warning("Please add an image first: the probe asks about the current image.")
            return sid, None, ""
        try:
            if not self._apply_image(sid, image_path):
                return sid, None, ""
            probs = self.manager.score(sid, question, "yes-no")
        except SessionError as exc:
            self.notify.warning(exc.user_message)
            return sid, None, ""
        except Exception:
            log.exception("probe failed")
            self.notify.warning("Cobra failed to score this question (a model error). Please try again.")
            return sid, None, ""
        probs = {k: float(v) for k, v in probs.items()}
        text = " · ".join(f"P({k}) = {v:.4f}" for k, v in probs.items())
        return sid, probs, text
