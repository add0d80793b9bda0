"""Decode steps replayed from CUDA graphs: one captured `MambaLM` step per batch size.

A decode step of Cobra-3B launches several hundred small kernels (64 layers x conv update, projections, state update);
on a GPU, launching them one by one from Python costs more than running them. A CUDA graph records the launches once
and replays them with one call. Graphs read and write fixed addresses, so each captured step owns static buffers:

    ids [B] --copy--> static ids ─┐
    state  --copy--> static state ─┴─ replay ──> static logits [B, V], static new state --clone--> caller

Inputs are copied in and outputs cloned out, so a graphed step keeps `MambaLM.step`'s contract (states are values:
the state passed in is never modified, the one returned is the caller's own).

Capture happens once per batch size, at start-up (`MambaLM.capture_step_graphs`, called by `BatchedStepper` for
batch sizes 1..max_batch), so that no capture runs while replies sample on the GPU from other threads; it uses the
"thread_local" capture mode, in which other threads' CUDA calls (allocations included) cannot invalidate a capture.

`GraphedStep(step_fn, capture)` takes the capture strategy as a parameter: `capture_cuda_graph` on CUDA; tests on the
CPU use `capture_eagerly`, which replays by calling the function again, to check the buffer logic against
`MambaLM.step`. `python -m cobra_app.bench.cuda_check` compares the real graphs with eager steps on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

StepOutput = tuple[Tensor, Any]  # (logits [B, V], state)
# capture(fn) -> (the outputs of fn, replay): after replay(), those same output tensors hold fn's results again
Capture = Callable[[Callable[[], StepOutput]], tuple[StepOutput, Callable[[], None]]]

WARMUP_CALLS = 3  # eager calls before capture: lazy kernel initialisation and Triton autotuning must not be captured


def capture_cuda_graph(fn: Callable[[], StepOutput]) -> tuple[StepOutput, Callable[[], None]]:
    """Warm up on a side stream, then record `fn` in a CUDA graph (PyTorch's recipe for capturing). "thread_local":
    only CUDA calls of this thread can invalidate the capture ("global", the default, fails on other threads'
    allocations, e.g. replies sampling on the GPU outside the model lock)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_CALLS):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        outputs = fn()
    return outputs, graph.replay


def capture_eagerly(fn: Callable[[], StepOutput]) -> tuple[StepOutput, Callable[[], None]]:
    """A stand-in for tests on any device: 'replay' reruns `fn` and copies its results into the first outputs."""
    logits, state = fn()

    def replay() -> None:
        new_logits, new_state = fn()
        logits.copy_(new_logits)
        copy_state(state, new_state)

    return (logits, state), replay


def copy_state(dst: Any, src: Any) -> None:
    """Copy a MambaState's tensors into another of the same shapes, in place."""
    for d, s in zip(dst.layers, src.layers, strict=True):
        d.conv.copy_(s.conv)
        d.ssm.copy_(s.ssm)


@dataclass
class _Captured:
    ids: Tensor  # [B] static input
    state: Any  # static input state
    logits: Tensor  # [B, V] static output
    new_state: Any  # static output state
    replay: Callable[[], None]


class GraphedStep:
    """`step_fn(ids [B], state) -> (logits [B, V], new state)` replayed from one capture per batch size.

    step_fn must be a pure function of its inputs' values (MambaLM's eager step is). A batch size is captured by
    `prepare` or else by its first call; calls copy, replay and clone. Not thread-safe: one decode step or capture
    at a time per model, as the session manager runs them (under its model lock).
    """

    def __init__(self, step_fn: Callable[[Tensor, Any], StepOutput], capture: Capture = capture_cuda_graph):
        self.step_fn, self.capture = step_fn, capture
        self._captured: dict[int, _Captured] = {}

    def __call__(self, input_ids: Tensor, state: Any) -> StepOutput:
        entry = self._captured.get(input_ids.shape[0]) or self._capture(input_ids, state)
        entry.ids.copy_(input_ids)
        copy_state(entry.state, state)
        entry.replay()
        new_state = entry.new_state.clone()
        new_state.seqlen = state.seqlen + 1
        return entry.logits.clone(), new_state

    def prepare(self, input_ids: Tensor, state: Any) -> None:
        """Capture the step for input_ids' batch size now unless it is captured (the inputs serve as examples)."""
        if input_ids.shape[0] not in self._captured:
            self._capture(input_ids, state)

    @property
    def batch_sizes(self) -> list[int]:
        """The batch sizes captured so far."""
        return sorted(self._captured)

    def _capture(self, input_ids: Tensor, state: Any) -> _Captured:
        ids, static_state = input_ids.clone(), state.clone()
        (logits, new_state), replay = self.capture(lambda: self.step_fn(ids, static_state))
        entry = _Captured(ids, static_state, logits, new_state, replay)
        self._captured[input_ids.shape[0]] = entry
        return entry
