"""A reply in flight: streaming its text, stopping it, and the numbers of how it went.

`Reply` is what callers hold: an iterator of text deltas (never half a UTF-8 character), safe to abandon: `close()`
(or `stop`, or leaving a `with` block) ends it synchronously, keeping the partial reply; a Reply dropped without that
is marked abandoned and finished by the next call on its session. After the end `.stats` is a `ReplyStats`.

`ReplyRun` drives the event stream of one reply (token events, then the decoder's `DecodeResult`) and calls the
`finish` callback its owner gave it exactly once, however the reply ends (exhausted, stopped, failed).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from cobra_app.generation.decode import DecodeResult, FinishReason, TokenEvent


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


@dataclass
class ReplyEnd:
    """What the owner's `finish` callback learns: the generated ids, the decoder's result (None when the stream did
    not reach it), the error that ended the reply (None: exhausted or stopped), and the timings (perf_counter s)."""

    token_ids: list[int]
    result: DecodeResult | None
    error: BaseException | None
    t0: float
    t_first: float | None
    t_last: float | None
    text: str

    def seconds(self) -> tuple[float, float, float]:
        """(time to the first token, decoding time after it, total): the first two 0-based when no token came."""
        now = time.perf_counter()
        if self.t_first is None:
            return now - self.t0, 0.0, now - self.t0
        return self.t_first - self.t0, self.t_last - self.t_first, now - self.t0


@dataclass(eq=False)
class ReplyRun:
    """One reply's stream. `events` yields TokenEvents and, when decoding ended normally or by a stop request, the
    DecodeResult. `finish(end)` saves the reply and returns its stats; `touch()` marks the session used per token."""

    events: Iterator[TokenEvent | DecodeResult]
    finish: Callable[[ReplyEnd], ReplyStats]
    stop_event: threading.Event
    touch: Callable[[], None]
    t0: float
    exchange: object = None  # the session's exchange this reply answers (None for stateless completions)
    done: bool = False
    abandoned: bool = False
    text: str = ""
    stats: ReplyStats | None = None
    token_ids: list[int] = field(default_factory=list)
    result: DecodeResult | None = None
    t_first: float | None = None
    t_last: float | None = None
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def next(self) -> str:
        """The next text delta; StopIteration at the end (the reply is saved by then)."""
        with self.lock:
            while not self.done:
                try:
                    event = next(self.events)
                except StopIteration:
                    self._end(None)
                    break
                except BaseException as exc:  # model error, KeyboardInterrupt: save what was generated, re-raise
                    self._end(exc)
                    raise
                if self._take(event):
                    return event.text
            raise StopIteration

    def _take(self, event: TokenEvent | DecodeResult) -> bool:
        """Record an event; True when it carries text for the caller."""
        if isinstance(event, DecodeResult):
            self.result = event
            return False
        if event.token_id is not None:
            self.token_ids.append(event.token_id)
            self.t_last = time.perf_counter()
            self.t_first = self.t_first or self.t_last
            self.touch()
        self.text += event.text
        return bool(event.text)

    def stop(self) -> None:
        """End decoding (waiting for a token being computed in another thread) and save the reply. Idempotent."""
        self.stop_event.set()
        with self.lock:
            if self.done:
                return
            try:
                for event in self.events:  # the decoder sees the stop request before any further model step
                    self._take(event)
            except BaseException as exc:
                self._end(exc)
                raise
            self._end(None)

    def _end(self, error: BaseException | None) -> None:
        self.done = True
        end = ReplyEnd(list(self.token_ids), self.result, error, self.t0, self.t_first, self.t_last, self.text)
        self.stats = self.finish(end)


class Reply:
    """Text deltas of one reply. Iterate it, or `close()` it to stop."""

    def __init__(self, run: ReplyRun, turn_index: Callable[[], int] = lambda: -1):
        self._run = run
        self._turn_index = turn_index

    def __iter__(self) -> Reply:
        return self

    def __next__(self) -> str:
        return self._run.next()

    def close(self) -> None:
        """Stop the reply now (idempotent); the partial reply is kept and saved."""
        self._run.stop()

    stop = close

    def __enter__(self) -> Reply:  # noqa: PYI034 - Reply is not subclassed
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        # No locks here (this may run inside any code): mark it; the next call on the session finishes it.
        run = getattr(self, "_run", None)
        if run is not None and not run.done:
            run.abandoned = True
            run.stop_event.set()

    @property
    def done(self) -> bool:
        return self._run.done

    @property
    def stats(self) -> ReplyStats | None:
        """Set once the reply has ended."""
        return self._run.stats

    @property
    def text(self) -> str:
        """Text streamed so far."""
        return self._run.text

    @property
    def turn_index(self) -> int:
        """The exchange this reply answers in its session (-1 once it is gone, or for a stateless completion)."""
        return self._turn_index()
