"""The decode loop over a recurrent LM's `step`, independent of sessions and UI.

Contract with the caller (the session layer): decoding starts from the logits and state after the prompt. The loop
feeds a token to the model only when it needs the logits after it, so the last emitted token is never consumed:
`result.state` is the state after the prompt plus every emitted token except the last, and `result.last_token` is
that last token. The caller closes the assistant turn by feeding `result.closing_ids(eos_id)`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerFast

from cobra_app.generation.sampling import SamplingParams, make_generator, next_token
from cobra_app.generation.stopping import StopStrings
from cobra_app.generation.streaming import TextStreamer

# How a reply ended: "eos" (the model ended it), "stop_string" (its text reached one of `SamplingParams.stop`),
# "length" (max_new_tokens), "stopped" (a stop request or an abandoned iteration). The decode loop ends with one of
# these four; the session layer adds "context" (the reply reached the context limit) and "error" (a model error).
FinishReason = Literal["eos", "stop_string", "length", "stopped", "context", "error"]


class StepLM(Protocol):
    """What decoding needs from a model (e.g. `MambaLM`). States are values: `step` returns a new one."""

    def step(self, input_ids: Tensor, state: Any) -> tuple[Tensor, Any]:
        """input_ids [B] -> (logits [B, V] fp32, new state)."""
        ...


@dataclass(frozen=True)
class TokenEvent:
    """One streamed item: an emitted token and the text it completes ("" while a character is incomplete, while
    text may still become a stop string, or without a streamer). When text is still held back as decoding ends, a
    last event with token_id=None carries it.

    With `Decoder(logprobs=k)`: `logprob` is the token's log-probability under the model's raw distribution
    (log-softmax of the logits over the tokenizer's vocabulary, before repetition penalty, temperature, top-k and
    top-p) and `top_logprobs` the k most likely (token id, log-probability) pairs of that distribution, best first."""

    token_id: int | None
    text: str = ""
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class DecodeResult:
    """How a decoding run ended. `state` has consumed every emitted token except `last_token` (None if none);
    `logits` [V] are the model's next-token logits at that state (the ones `last_token` was drawn from)."""

    token_ids: list[int]
    finish_reason: FinishReason
    state: Any
    last_token: int | None
    logits: Tensor | None = None

    def closing_ids(self, eos_id: int) -> list[int]:
        """Ids still to feed so that `state` ends the assistant turn: the pending last token, then EOS unless the
        last token is EOS. (After a stop before any token this is just [eos]; the release writes an empty reply as
        " " + EOS, which the caller may prefer.)"""
        pending = [] if self.last_token is None else [self.last_token]
        return pending if self.last_token == eos_id else pending + [eos_id]


class Decoder:
    """One decoding run. Iterate (once) for `TokenEvent`s; `result` is set when the iteration ends.

    lm: model with `step`; first_logits [V] the logits after the prompt; state: the state after the prompt.
    stop_event: checked before every model step (and before the first token); once set, decoding ends after the
    token already emitted, with finish_reason "stopped". Abandoning the iteration (closing it) counts as a stop.
    history_ids: the prompt's ids, for the repetition penalty. streamer: fills `TokenEvent.text` (needed for
    `params.stop`: decoding ends with finish_reason "stop_string" once the text contains a stop string, and the
    events' texts end just before it; the token ids keep every emitted token). vocab_size: only logits[:vocab_size]
    are candidates (the model's rows beyond the tokenizer are padding).
    logprobs: None, or k >= 0: each TokenEvent carries its token's logprob and the k most likely tokens' (raw model).
    """

    def __init__(
        self,
        lm: StepLM,
        first_logits: Tensor,
        state: Any,
        params: SamplingParams,
        eos_id: int,
        *,
        stop_event: threading.Event | None = None,
        history_ids: Sequence[int] = (),
        streamer: TextStreamer | None = None,
        vocab_size: int | None = None,
        logprobs: int | None = None,
    ):
        if first_logits.dim() != 1:
            raise ValueError(f"first_logits must be [vocab], got shape {tuple(first_logits.shape)}")
        if params.stop and streamer is None:
            raise ValueError("stop strings need a streamer (they are matched on the text)")
        if logprobs is not None and logprobs < 0:
            raise ValueError(f"logprobs must be None or >= 0, got {logprobs}")
        self.lm, self.params, self.eos_id = lm, params, eos_id
        self.stop_event, self.streamer, self.vocab_size = stop_event, streamer, vocab_size
        self.logprobs = logprobs
        self.result: DecodeResult | None = None
        self._events = self._run(first_logits, state, list(history_ids))

    def __iter__(self) -> Iterator[TokenEvent]:
        return self._events

    def _stop_requested(self) -> bool:
        return self.stop_event is not None and self.stop_event.is_set()

    def _step(self, token: int, state: Any, device: torch.device) -> tuple[Tensor, Any]:
        """Consume one token: -> (logits [1, V], new state)."""
        with torch.no_grad():
            logits, state = self.lm.step(torch.tensor([token], device=device), state)
        return logits, state

    def _event(self, token: int, logits: Tensor, stops: StopStrings | None) -> TokenEvent:
        """The event of an emitted token drawn from logits [V] (its text held back while it may start a stop)."""
        text = self.streamer.put(token) if self.streamer else ""
        text = stops.push(text) if stops else text
        if self.logprobs is None:
            return TokenEvent(token, text)
        logprob, top = token_logprobs(logits[: self.vocab_size], token, self.logprobs)
        return TokenEvent(token, text, logprob, top)

    def _run(self, logits: Tensor, state: Any, history: list[int]) -> Iterator[TokenEvent]:
        p, device = self.params, logits.device
        generator = None if p.greedy else make_generator(p.seed, device)
        stops = StopStrings(p.stop) if p.stop else None
        ids = torch.tensor(history + [0] * p.max_new_tokens, dtype=torch.long, device=device)[None]  # [1, T + N]
        logits, tokens, finish = logits[None], [], "stopped"
        try:
            while not self._stop_requested():
                if tokens:
                    logits, state = self._step(tokens[-1], state, device)
                n = len(history) + len(tokens)
                token = int(next_token(logits[:, : self.vocab_size], ids[:, :n], p, generator))
                ids[0, n] = token
                tokens.append(token)
                yield self._event(token, logits[0], stops)
                if stops and stops.matched is not None:
                    finish = "stop_string"
                    break
                if token == self.eos_id or len(tokens) == p.max_new_tokens:
                    finish = "eos" if token == self.eos_id else "length"
                    break
        finally:  # also on close(): the result is consistent whenever the loop leaves
            self.result = DecodeResult(tokens, finish, state, tokens[-1] if tokens else None, logits[0])
        rest = self.streamer.flush() if self.streamer else ""
        if stops:
            matched_before = stops.matched is not None
            rest = stops.push(rest) + stops.flush()
            if not matched_before and stops.matched is not None:  # the held-back tail completed a stop string
                self.result = replace(self.result, finish_reason="stop_string")
        if rest:
            yield TokenEvent(None, rest)


def token_logprobs(logits: Tensor, token: int, k: int) -> tuple[float, tuple[tuple[int, float], ...]]:
    """logits [V] -> (log-softmax at `token`, the k most likely (id, logprob), most likely first)."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    top = torch.topk(log_probs, min(k, log_probs.shape[0])) if k else None
    pairs = tuple(zip(top.indices.tolist(), top.values.tolist())) if top is not None else ()
    return float(log_probs[token]), pairs


def generate_text(
    lm: StepLM,
    first_logits: Tensor,
    state: Any,
    params: SamplingParams,
    eos_id: int,
    tokenizer: PreTrainedTokenizerFast,
    *,
    stop_event: threading.Event | None = None,
    history_ids: Sequence[int] = (),
) -> str:
    """Run a `Decoder` to the end and return the reply's text (EOS not included, not stripped). Candidates are
    limited to the tokenizer's vocabulary."""
    decoder = Decoder(
        lm,
        first_logits,
        state,
        params,
        eos_id,
        stop_event=stop_event,
        history_ids=history_ids,
        streamer=TextStreamer(tokenizer),
        vocab_size=len(tokenizer),
    )
    return "".join(event.text for event in decoder)
