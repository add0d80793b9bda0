"""The model work of the sessions, as calls that take values and return values.

Every GPU-bound call the session layer makes is one of these four, and each takes what it needs (a state, embeddings,
token ids) and returns the new state; none reads or changes anything else of the session layer. So a call can run in
another process: on ZeroGPU Spaces (`gpu_call=spaces.GPU`) each runs in a forked worker that holds the GPU.

    identity() -> str                                        the model's identity (keys of stored states)
    encode(image) -> embeds [1, P, d]                        the image's projected patches
    read(start, ids, embeds=None) -> Snapshot                prefill [patches] + ids on top of start.state
    reply(start, ids, params, ...) -> iterator of events     prefill ids, then decode: a `Prefilled` event (the
                                                             state before the reply, for regenerate), TokenEvents,
                                                             and last the DecodeResult (the state after the reply's
                                                             tokens but its last)

In-process (the default) model calls are serialised by one lock and the decode steps of concurrent replies are
batched (`BatchedStepper`). With `gpu_call`, each call is `gpu_call(fn)`: inputs are moved to the model's device
inside the call and outputs returned on the CPU (the caller's process may have no GPU); replies decode alone. A
remote reply cannot see the caller's stop request: the caller stops it by closing its event iterator
(`stops_by_closing`), which ZeroGPU passes on to the worker.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from cobra_app.generation import Decoder, SamplingParams, TextStreamer
from cobra_app.generation.batching import BatchedStepper
from cobra_app.generation.decode import DecodeResult, StepLM, TokenEvent
from cobra_app.model.mamba import MambaState
from cobra_app.sessions.protocol import SessionModel
from cobra_app.sessions.snapshot import Snapshot

GpuCall = Callable[[Callable], Callable]


@dataclass(frozen=True)
class Prefilled:
    """The reply's prompt has been read: the state and logits before its first token."""

    snapshot: Snapshot


ReplyEvent = Prefilled | TokenEvent | DecodeResult


def _to(state: MambaState | None, device) -> MambaState | None:
    return None if state is None else state.to(device)


class ModelCalls:
    """The model calls of one SessionManager. `gpu_call`: None (in-process) or a decorator that runs a call elsewhere
    (spaces.GPU; tests use a stand-in that forks a child process per call)."""

    def __init__(self, model: SessionModel, *, max_batch: int = 8, gpu_call: GpuCall | None = None):
        self.model = model
        self.stops_by_closing = gpu_call is not None
        self._lock: AbstractContextManager = threading.RLock() if gpu_call is None else nullcontext()
        self._out = None if gpu_call is None else "cpu"  # where results go
        self.stepper: BatchedStepper | None = None
        if gpu_call is None:
            self.stepper = BatchedStepper(model, max_batch=max_batch, model_lock=self._lock)
            self.identity, self.encode, self.read, self.reply = self._identity, self._encode, self._read, self._reply
        else:
            self.identity, self.encode = gpu_call(self._identity), gpu_call(self._encode)
            self.read, self.reply = gpu_call(self._read), gpu_call(self._reply)

    @property
    def _step_lm(self) -> StepLM:
        return self.stepper if self.stepper is not None else self.model

    def _snapshot(self, logits: Tensor, state: MambaState, text_tokens: int) -> Snapshot:
        """Owned copies (a state may view a larger buffer), on the output device."""
        device = self._out or state.device
        return Snapshot(state.clone().to(device), logits.detach().clone().to(device), text_tokens)

    def _identity(self) -> str:
        return self.model.identity()

    def _encode(self, image: Image.Image) -> Tensor:
        with self._lock, torch.no_grad():
            embeds = self.model.encode_image(image).detach().clone()
        return embeds if self._out is None else embeds.to(self._out)

    def _read(self, start: Snapshot, ids: Sequence[int], embeds: Tensor | None = None) -> Snapshot:
        """Prefill [embeds] + ids (not both empty) on top of `start` -> the snapshot after them."""
        device = self.model.device
        input_ids = torch.tensor([list(ids)], dtype=torch.long, device=device)
        with self._lock, torch.no_grad():
            logits, state = self.model.prefill(input_ids, None if embeds is None else embeds.to(device),
                                               _to(start.state, device), logits_to_keep=1)
        return self._snapshot(logits[0, -1], state, start.text_tokens + len(ids))

    def _reply(self, start: Snapshot, ids: Sequence[int], params: SamplingParams, history_ids: Sequence[int],
               logprobs: int | None = None, stop_event: threading.Event | None = None) -> Iterator[ReplyEvent]:
        """Read `ids` on top of `start` (yielding `Prefilled`; nothing to read: decode from start.logits), then
        decode. history_ids: the prompt's ids (repetition penalty)."""
        if ids:
            start = self._read(start, ids)
            yield Prefilled(start)
        device = self.model.device
        decoder = Decoder(self._step_lm, start.logits.to(device), _to(start.state, device), params,
                          self.model.turns.eos_id, stop_event=stop_event, history_ids=history_ids,
                          streamer=TextStreamer(self.model.tokenizer), vocab_size=self.model.vocab_size,
                          logprobs=logprobs)
        yield from decoder
        result = decoder.result
        if self._out is not None and result.state is not None:
            result = DecodeResult(result.token_ids, result.finish_reason, result.state.to(self._out),
                                  result.last_token, result.logits.to(self._out))
        yield result

    @property
    def decode_counts(self) -> tuple[int, int]:
        """(batched decode steps run, sequences stepped in them): in-process only, (0, 0) otherwise."""
        return (self.stepper.batches, self.stepper.rows) if self.stepper is not None else (0, 0)
