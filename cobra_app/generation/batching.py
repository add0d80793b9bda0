"""Batched decoding across conversations: concurrent one-token steps are stacked into one model step.

Decoding a token reads every weight of the model once, whatever the batch size, so conversations that generate at
the same time share that cost: `BatchedStepper.step` has the signature of `MambaLM.step` for one sequence, and the
calls that arrive from other threads while a batch runs are stacked (states via `MambaState.stack`) into the next one.
No timer and no waiting: a lone caller runs alone at once. On CUDA the model's decode step replays CUDA graphs, one
per batch size: the stepper has them captured for every batch size it can form (1..max_batch) when it is created,
so that no capture runs while replies sample on the GPU from other threads.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor

from cobra_app.generation.decode import StepLM
from cobra_app.model.mamba import MambaState

log = logging.getLogger(__name__)


@dataclass
class _Request:
    input_ids: Tensor  # [1]
    state: MambaState  # batch 1
    logits: Tensor | None = None  # [1, V]
    new_state: MambaState | None = None
    error: BaseException | None = None
    done: bool = False


class BatchedStepper:
    """A drop-in `step(input_ids [1], state) -> (logits [1, V], state)` that batches concurrent callers.

    The caller that finds no batch running becomes the leader: it takes up to `max_batch` pending requests (its own
    among them, oldest first), runs one batched step under `model_lock`, and hands each caller its row. Rows are
    independent, so each result equals an unbatched step up to float rounding (tests: tests/generation/test_batching).
    """

    def __init__(self, lm: StepLM, max_batch: int = 8, model_lock: threading.RLock | None = None):
        self.lm, self.max_batch = lm, max_batch
        self.model_lock = model_lock or nullcontext()
        self._cond = threading.Condition()
        self._pending: list[_Request] = []
        self._busy = False
        self.batches = 0  # batched steps run (for stats)
        self.rows = 0  # sequences stepped in them
        capture = getattr(lm, "capture_step_graphs", None)  # MambaLM and pipeline.Cobra have it; a bare StepLM not
        start = time.perf_counter()
        with self.model_lock:
            self.graph_batch_sizes: list[int] = capture(range(1, max_batch + 1)) if capture else []
        if self.graph_batch_sizes:
            log.info("decode-step CUDA graphs captured for batch sizes %s in %.1f s", self.graph_batch_sizes,
                     time.perf_counter() - start)

    def step(self, input_ids: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        request = _Request(input_ids.reshape(1), state)
        with self._cond:
            self._pending.append(request)
            while not request.done:
                if self._busy:
                    self._cond.wait()
                    continue
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                self._busy = True
                self._cond.release()
                try:
                    self._run(batch)
                finally:
                    self._cond.acquire()
                    self._busy = False
                    self._cond.notify_all()
        if request.error is not None:
            raise request.error
        return request.logits, request.new_state

    def _run(self, batch: list[_Request]) -> None:
        """One model step for every request in `batch`. When a batched step fails, each row is retried alone, so an
        error caused by one conversation reaches that conversation only."""
        try:
            self._step(batch)
        except BaseException as exc:  # noqa: BLE001 - handed to the failing callers, re-raised there
            if len(batch) == 1 or not isinstance(exc, Exception):  # KeyboardInterrupt & co. end every row
                for request in batch:
                    request.error = exc
            else:
                for request in batch:
                    try:
                        self._step([request])
                    except Exception as row_exc:  # noqa: BLE001 - re-raised in this request's caller
                        request.error = row_exc
        finally:
            for request in batch:
                request.done = True
            self.batches += 1
            self.rows += len(batch)

    def _step(self, batch: list[_Request]) -> None:
        states = MambaState.stack([r.state for r in batch]) if len(batch) > 1 else batch[0].state
        with self.model_lock, torch.no_grad():
            logits, new_state = self.lm.step(torch.cat([r.input_ids for r in batch]), states)
        rows = new_state.unstack([r.state.seqlen + 1 for r in batch])
        for i, request in enumerate(batch):
            request.logits, request.new_state = logits[i : i + 1], rows[i]
