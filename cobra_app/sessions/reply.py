"""A reply in flight: streaming its text, stopping it, and the numbers of how it went.

`Reply` is what callers hold: an iterator of text deltas (never half a UTF-8 character), safe to abandon: `close()`
(or `stop`, or leaving a `with` block) ends it synchronously, keeping the partial reply; a Reply dropped without that
is marked abandoned (a session's next call finishes it). `events()` iterates the same reply token by token
(`TokenEvent`: id, text delta, logprobs when asked for). After the end `.stats` is a `ReplyStats` and
`.release_text` the reply as the history keeps it.

`ReplyRun` drives the event stream of one reply (`compute.ModelCalls.reply`: the prompt's state, token events, the
decoder's result) and calls the `finish` callback its owner gave it exactly once, however the reply ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from cobra_app.generation.decode import DecodeResult, FinishReason, TokenEvent
from cobra_app.sessions.compute import Prefilled, ReplyEvent
from cobra_app.sessions.snapshot import Snapshot


@dataclass(frozen=True)
class ReplyStats:
    """How a reply went. Token counts:

    prompt_tokens: the prompt the reply answers: image patches + every text id of the conversation so far.
    cached_tokens: of those, the ones whose state was taken from the store (memory or disk).
    prefill_tokens: text ids of the prompt read for this reply, rebuilt ones excluded (a follow-up: its user segment,
    plus the previous reply's last id and EOS, or its re-tokenized history ids; 0 for regenerate).
    rebuilt_tokens: tokens re-read because states a session had stored were gone (evicted; patches included).
    new_tokens: generated ids, EOS included when generated. processed_tokens: every token the model read for this
    reply: patches and prompt ids read (prefill + rebuilt) and one per decode step (new_tokens - 1: the last
    generated id is read by the next turn, with EOS). context_tokens: text ids in the conversation after this reply
    (what `max_context_tokens` limits). image_tokens: patches in front of the text. state_bytes: size of a state.

    ttft_s: from the call to the first generated token, lookups, reads and prefill included. tokens_per_s: decoding
    speed after the first token. finish_reason: "eos", "length" (max_new_tokens), "stopped", "context" (the reply
    reached the context limit; the next message will raise ContextFull) or "error". cache_hit: nothing rebuilt.
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
    prompt_tokens: int = 0
    cached_tokens: int = 0


@dataclass
class ReplyEnd:
    """What the owner's `finish` callback learns: the generated ids, the decoder's result (None when the stream did
    not reach it), the error that ended the reply (None: exhausted or stopped), whether the prompt was read, and the
    timings (perf_counter seconds)."""

    token_ids: list[int]
    result: DecodeResult | None
    error: BaseException | None
    prefilled: bool
    t0: float
    t_first: float | None
    t_last: float | None

    def seconds(self) -> tuple[float, float, float]:
        """(time to the first token, decoding time after it, total); the first two 0-based when no token came."""
        now = time.perf_counter()
        if self.t_first is None:
            return now - self.t0, 0.0, now - self.t0
        return self.t_first - self.t0, self.t_last - self.t_first, now - self.t0


@dataclass(eq=False)
class ReplyRun:
    """One reply's stream. `finish(end)` saves the reply and returns its stats; `touch()` marks the session used;
    `on_prefilled(snapshot)` learns the state before the reply. stop_by_closing: a stop closes the event stream (a
    reply running in another process cannot see `stop_event`) instead of letting the decoder end it."""

    events: Iterator[ReplyEvent]
    finish: Callable[[ReplyEnd], ReplyStats]
    stop_event: threading.Event
    touch: Callable[[], None]
    t0: float
    exchange: object = None  # the session's exchange this reply answers (None for stateless completions)
    on_prefilled: Callable[[Snapshot], None] = lambda snap: None
    stop_by_closing: bool = False
    done: bool = False
    abandoned: bool = False
    prefilled: bool = False
    text: str = ""
    release_text: str | None = None  # set by the owner's finish: the reply as the history keeps it
    stats: ReplyStats | None = None
    token_ids: list[int] = field(default_factory=list)
    result: DecodeResult | None = None
    t_first: float | None = None
    t_last: float | None = None
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def next_event(self) -> TokenEvent:
        """The next token event; StopIteration at the end (the reply is saved by then)."""
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
                if isinstance(event, TokenEvent):
                    self._take(event)
                    return event
                self._take_other(event)
            raise StopIteration

    def _take(self, event: TokenEvent) -> None:
        if event.token_id is not None:
            self.token_ids.append(event.token_id)
            self.t_last = time.perf_counter()
            self.t_first = self.t_first or self.t_last
            self.touch()
        self.text += event.text

    def _take_other(self, event: Prefilled | DecodeResult) -> None:
        if isinstance(event, Prefilled):
            self.prefilled = True
            self.on_prefilled(event.snapshot)
        else:
            self.result = event

    def stop(self) -> None:
        """End decoding (waiting for a token being computed in another thread) and save the reply. Idempotent."""
        self.stop_event.set()
        with self.lock:
            if self.done:
                return
            try:
                if self.stop_by_closing:
                    self.events.close()
                else:
                    for event in self.events:  # the decoder sees the stop request before any further model step
                        self._take(event) if isinstance(event, TokenEvent) else self._take_other(event)
            except BaseException as exc:
                self._end(exc)
                raise
            self._end(None)

    def _end(self, error: BaseException | None) -> None:
        self.done = True
        end = ReplyEnd(list(self.token_ids), self.result, error, self.prefilled, self.t0, self.t_first, self.t_last)
        self.stats = self.finish(end)


class Reply:
    """Text deltas of one reply. Iterate it, or `close()` it to stop."""

    def __init__(self, run: ReplyRun, turn_index: Callable[[], int] = lambda: -1):
        self._run = run
        self._turn_index = turn_index

    def __iter__(self) -> Reply:
        return self

    def __next__(self) -> str:
        while True:
            event = self._run.next_event()
            if event.text:
                return event.text

    def events(self) -> Iterator[TokenEvent]:
        """The rest of the reply token by token: one TokenEvent per generated id (text "" while a character is
        incomplete; logprobs when the reply was started with top_logprobs), and a last one with token_id None when
        text was held back until the end. Convert ids to text with the model's tokenizer."""
        while True:
            try:
                yield self._run.next_event()
            except StopIteration:
                return

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
        """Text streamed so far (as generated: not stripped)."""
        return self._run.text

    @property
    def release_text(self) -> str | None:
        """Once the reply has ended: the reply as the conversation's history keeps it, i.e. what the release stores
        and what a client resends: the generated ids decoded and stripped (`session.reply_segment`)."""
        return self._run.release_text

    @property
    def turn_index(self) -> int:
        """The exchange this reply answers in its session (-1 once it is gone, or for a stateless completion)."""
        return self._turn_index()
