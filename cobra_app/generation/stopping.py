"""Stop strings (OpenAI's `stop`): a reply ends as soon as its text contains one of them, cut just before it, and no
part of a stop string is ever streamed.

transformers' `StopStringCriteria` only says *that* generation should stop, on token ids, and leaves the text whole;
an API reply must end exactly before the stop string, also while streaming. So this works on the streamed text: text
that could still turn into a stop string is held back until the next delta decides it.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopStrings:
    """Feed text deltas to `push`; it returns the part that is safe to emit. Once a stop string is complete (the
    first to end, as generation would stop there; of two ending together the longer), `matched` holds it, the text
    before it has been emitted and everything from it on is dropped. `flush()` releases the text
    still held back when the reply ends for another reason."""

    def __init__(self, stops: Sequence[str]):
        if not stops or not all(isinstance(s, str) and s for s in stops):
            raise ValueError(f"stop strings must be non-empty strings, got {stops!r}")
        self.stops = tuple(stops)
        self.matched: str | None = None
        self._held = ""

    def push(self, delta: str) -> str:
        """Add generated text; return what can be emitted now ("" once a stop string matched)."""
        if self.matched is not None:
            return ""
        text = self._held + delta
        hits = [(i + len(s), i, s) for s in self.stops if (i := text.find(s)) >= 0]
        if hits:
            _, start, self.matched = min(hits)
            self._held = ""
            return text[:start]
        keep = max((k for s in self.stops for k in range(1, min(len(s), len(text) + 1)) if text.endswith(s[:k])),
                   default=0)  # the longest tail that is the start of a stop string
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The text held back (the reply ended without completing a stop string)."""
        held, self._held = self._held, ""
        return "" if self.matched is not None else held
