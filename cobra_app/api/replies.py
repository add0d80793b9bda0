"""A backend reply -> OpenAI's answer: one `ChatCompletion`, or the `ChatCompletionChunk`s of a stream.

The content is the reply as the release stores it: stripped of surrounding whitespace, so a client that resends it
presents exactly the conversation the store holds. A stream strips as it goes (leading whitespace dropped, trailing
whitespace held until more text follows), so its deltas join to the very content a non-streamed request returns.
The backend's token events are read one at a time in a worker thread (the model runs there, never in the event loop).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import anyio
from starlette.concurrency import run_in_threadpool
from tokenizers import decoders
from transformers.convert_slow_tokenizer import bytes_to_unicode

from cobra_app.api.backend import CompletionStats, ReplyStream
from cobra_app.api.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    FinishReason,
    PromptTokensDetails,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from cobra_app.generation import TokenEvent

FINISH_REASONS: dict[str, FinishReason] = {"eos": "stop", "stop_string": "stop", "stopped": "stop",
                                           "length": "length", "context": "length"}


class TokenTexts:
    """Token ids -> their text and UTF-8 bytes, for log-probabilities (a byte-level BPE token may hold part of a
    character: its text then shows U+FFFD and its bytes say exactly what it holds)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.special = set(tokenizer.all_special_ids)
        byte_level = isinstance(tokenizer.backend_tokenizer.decoder, decoders.ByteLevel)
        self._byte = {char: byte for byte, char in bytes_to_unicode().items()} if byte_level else None

    def bytes_of(self, token_id: int) -> bytes:
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if self._byte is not None and all(char in self._byte for char in piece):
            return bytes(self._byte[char] for char in piece)
        return self.tokenizer.decode([token_id]).encode()  # added tokens (special, runs of spaces) are plain text

    def top(self, token_id: int, logprob: float) -> TopLogprob:
        data = self.bytes_of(token_id)
        return TopLogprob(token=data.decode("utf-8", errors="replace"), logprob=logprob, bytes=list(data))

    def logprob(self, event: TokenEvent) -> TokenLogprob:
        first = self.top(event.token_id, event.logprob)
        return TokenLogprob(**first.model_dump(), top_logprobs=[self.top(t, lp) for t, lp in event.top_logprobs])


class StrippedText:
    """Deltas of a text -> deltas of the same text `.strip()`ped, emitted as early as possible."""

    def __init__(self):
        self._started = False
        self._pending = ""  # whitespace that only more text can confirm

    def push(self, delta: str) -> str:
        if not self._started:
            delta = delta.lstrip()
            self._started = bool(delta)
        text = self._pending + delta
        body = text.rstrip()
        self._pending = text[len(body) :]
        return body


def usage(stats: CompletionStats) -> Usage:
    return Usage(prompt_tokens=stats.prompt_tokens, completion_tokens=stats.new_tokens,
                 total_tokens=stats.prompt_tokens + stats.new_tokens,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=stats.cached_tokens))


@dataclass
class Piece:
    """What one token event adds to the answer."""

    content: str
    logprobs: list[TokenLogprob]


class Completion:
    """One reply on its way to a client. Owns the reply and the slot it holds (`release_slot`); `aclose()` stops the
    reply (when the client is gone) and frees the slot, once, whoever calls it first."""

    def __init__(self, reply: ReplyStream, release_slot: Callable[[], None], texts: TokenTexts, *, model: str,
                 logprobs: bool):
        self.reply, self._release_slot, self.texts = reply, release_slot, texts
        self.model, self.logprobs = model, logprobs
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())
        self._closed = False

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):  # also when the request is being cancelled (a client gone)
            try:
                await run_in_threadpool(self.reply.close)
            finally:
                self._release_slot()

    async def pieces(self) -> AsyncIterator[Piece]:
        """The answer token by token (pieces with neither text nor log-probabilities are skipped)."""
        events, stripped = self.reply.events(), StrippedText()
        while (event := await run_in_threadpool(next, events, None)) is not None:
            entries = [self.texts.logprob(event)] if (self.logprobs and event.token_id is not None
                                                      and event.token_id not in self.texts.special) else []
            content = stripped.push(event.text)
            if content or entries:
                yield Piece(content, entries)

    def finish_reason(self) -> FinishReason:
        return FINISH_REASONS[self.reply.stats.finish_reason]

    async def result(self) -> ChatCompletion:
        """Run the reply to its end -> the whole completion."""
        content, entries = "", []
        async for piece in self.pieces():
            content += piece.content
            entries += piece.logprobs
        choice = Choice(message=AssistantMessage(content=content), finish_reason=self.finish_reason(),
                        logprobs=ChoiceLogprobs(content=entries) if self.logprobs else None)
        return ChatCompletion(id=self.id, created=self.created, model=self.model, choices=[choice],
                              usage=usage(self.reply.stats))

    def chunk(self, delta: Delta, *, logprobs: list[TokenLogprob] | None = None,
              finish_reason: FinishReason | None = None) -> ChatCompletionChunk:
        choice = ChunkChoice(delta=delta, finish_reason=finish_reason,
                             logprobs=ChoiceLogprobs(content=logprobs) if logprobs is not None else None)
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[choice])

    async def chunks(self, include_usage: bool) -> AsyncIterator[ChatCompletionChunk]:
        """The stream: the role, one chunk per token with text (or log-probabilities), the finish reason, then the
        usage when asked for."""
        yield self.chunk(Delta(role="assistant", content=""))
        async for piece in self.pieces():
            yield self.chunk(Delta(content=piece.content), logprobs=piece.logprobs if self.logprobs else None)
        yield self.chunk(Delta(), finish_reason=self.finish_reason())
        if include_usage:
            yield ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[],
                                      usage=usage(self.reply.stats))
