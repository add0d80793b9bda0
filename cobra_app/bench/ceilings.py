"""Timing, and this machine's ceilings measured in the same run as the model: matmul GFLOP/s per dtype and copy
bandwidth. Each ceiling is a `Case` (a call and the work it does) so that it can be timed in turns with the model."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def seconds_per_call(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall time of each of `repeats` calls of `fn()` (CUDA-synchronised where relevant)."""
    times = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `repeats` runs after `warmup` runs."""
    seconds_per_call(fn, warmup)
    return statistics.median(seconds_per_call(fn, repeats))


def interleaved_seconds(
    fns: dict[str, Callable[[], object]], rounds: int, per_round: int | dict[str, int] = 1, warmup: int = 1
) -> dict[str, list[float]]:
    """Each function's median wall time per round, the functions timed in turns (round r times every function
    `per_round` times, or `per_round[name]`, before round r + 1 starts), so that figures to be compared see the same
    machine: on a shared host the memory bandwidth drifts by a third within minutes.
    Returns name -> [median seconds of round r]."""
    for fn in fns.values():
        seconds_per_call(fn, warmup)
    per_round_medians: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            calls = per_round if isinstance(per_round, int) else per_round[name]
            per_round_medians[name].append(statistics.median(seconds_per_call(fn, calls)))
    return per_round_medians


@dataclass
class Case:
    """A call that does a known amount of work: `work` FLOP (matmul) or bytes moved (copy) per call."""

    call: Callable[[], object]
    work: float

    def rate(self, seconds: float) -> float:
        """Work per second in billions (GFLOP/s or GB/s)."""
        return self.work / seconds / 1e9


def matmul_case(dtype: torch.dtype, device: str = "cpu", m: int = 760, k: int = 2560, n: int = 10240) -> Case:
    """x[m, k] @ W[n, k]^T: the shape of Cobra-3B's largest prefill matmul (in_proj, 760 tokens)."""
    x = torch.randn(m, k, dtype=dtype, device=device)
    w = torch.randn(n, k, dtype=dtype, device=device)
    return Case(lambda: F.linear(x, w), 2 * m * k * n)


def copy_case(device: str = "cpu", nbytes: int = 1 << 30) -> Case:
    """A large copy, counting the bytes read and the bytes written."""
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return Case(lambda: dst.copy_(src), 2 * nbytes)


def _kernel_linear_flops(x_shape, w_shape, *_, **__) -> int:
    """The CPU kernels' product x [M, K] @ w [N, K]^T (torch.ops.cobra_linear.linear): 2 M K N."""
    return 2 * x_shape[0] * x_shape[1] * w_shape[0]


def count_flops(fn: Callable[[], object]) -> float:
    """Floating-point operations of one call of `fn` (matmuls, convolutions and attention, as torch counts them, and
    the CPU kernels' products, which bf16-stored weights under fp32 arithmetic go through)."""
    kernel_linear = getattr(getattr(torch.ops, "cobra_linear", None), "linear", None)
    mapping = {kernel_linear: _kernel_linear_flops} if kernel_linear is not None else {}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return float(counter.get_total_flops())
