"""This machine's ceilings, measured in the same run as the model: matmul GFLOP/s per dtype and copy bandwidth."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `repeats` runs after `warmup` runs (CUDA-synchronised where relevant)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(dtype: torch.dtype, device: str = "cpu", m: int = 760, k: int = 2560, n: int = 10240) -> float:
    """GFLOP/s of x[m, k] @ W[n, k]^T: the shape of Cobra-3B's largest prefill matmul (in_proj, 760 tokens)."""
    x = torch.randn(m, k, dtype=dtype, device=device)
    w = torch.randn(n, k, dtype=dtype, device=device)
    return 2 * m * k * n / median_seconds(lambda: F.linear(x, w)) / 1e9


def copy_bandwidth_gbs(device: str = "cpu", nbytes: int = 1 << 30) -> float:
    """Memory bandwidth in GB/s of a large copy, counting the bytes read and the bytes written."""
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / median_seconds(lambda: dst.copy_(src)) / 1e9
