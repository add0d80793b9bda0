"""What the HTTP layer needs from whatever computes replies (the seam fixed in CONTRACT-19.md).

`SessionManager.complete` (the state store: only what is not cached is computed) and `ReferenceBackend.complete`
(full recompute, the obviously correct reference) both satisfy `ChatBackend`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from PIL import Image

from cobra_app.generation import SamplingParams, TokenEvent

Message = tuple[str, str]  # (role, text): "user" / "assistant", alternating, first and last "user"


class CompletionStats(Protocol):
    """How a reply went (set once it has ended)."""

    prompt_tokens: int  # image patches + text tokens of the request's prompt
    cached_tokens: int  # of those, taken from the state store instead of being computed
    new_tokens: int  # generated tokens, EOS included when generated (OpenAI's completion_tokens)
    finish_reason: str  # "eos" | "stop_string" | "length" | "context" | "stopped" | "error"
    processed_tokens: int  # every token the model read for this reply


class ReplyStream(Protocol):
    """One reply being generated. `events()` yields each generated token (`TokenEvent`: id, text delta, and with
    top_logprobs its log-probabilities) and may be iterated once; `close()` stops it early and leaves stored state
    consistent (idempotent; a client that disconnects calls it)."""

    @property
    def stats(self) -> CompletionStats | None: ...

    def events(self) -> Iterator[TokenEvent]: ...

    def close(self) -> None: ...


class BackendUnavailable(Exception):
    """The backend cannot answer now but may in a moment (e.g. every model replica tried was lost): the API answers
    503 with `user_message` and Retry-After, not 500."""

    user_message = "The model server is restarting. Please try again in a moment."


class ChatBackend(Protocol):
    def complete(self, image: Image.Image | None, messages: Sequence[Message], params: SamplingParams | None = None,
                 *, top_logprobs: int | None = None) -> ReplyStream:
        """Start the reply to `messages` (the whole conversation, about `image`). Raises SessionError subclasses
        (`.user_message`) for what the client must change: an empty message, a conversation over the context;
        `BackendUnavailable` (here or from the reply's events) when it cannot answer now."""
        ...
