"""What this CPU runs fast: its instruction sets, and whether torch's bf16 matrix multiply beats fp32 here.

The kernels (`cpu_isa.h`) pick their variant from the same instruction-set levels, `ISA_LEVELS`. COBRA_CPU_ISA caps the
level ("avx2" makes this machine behave as an AVX2-only one for our kernels and for the dtype choice): the hook for
tests and for benchmarks that emulate a smaller CPU (with ATEN_CPU_CAPABILITY=avx2 and ONEDNN_MAX_CPU_ISA=AVX2 for
torch's own kernels).

bf16 compute pays only where the bf16 matmul is fast: with AVX-512 BF16 (or AMX) on x86; on an AVX2-only EPYC torch's
bf16 matmul ran at 0.3 GFLOP/s against 60-89 in fp32. x86 CPUs without AVX-512 BF16 are decided from their features;
elsewhere (and where the features allow it: torch's kernels may still be limited, e.g. by ONEDNN_MAX_CPU_ISA) a probe
of a few tens of milliseconds times both dtypes on one thread, in CPU time (steady on a busy machine, where wall time
of a 2-thread product is not), once per process.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

ISA_LEVELS = ("baseline", "avx2", "avx512", "avx512_bf16")  # each has everything of the ones before it
ISA_ENV = "COBRA_CPU_ISA"
# bf16 compute is chosen where the probe's bf16 matmul is at least this much faster than fp32 (else fp32 arithmetic,
# the more accurate one, costs nothing more)
BF16_MIN_SPEEDUP = 1.25
PROBE_SHAPE = (128, 512, 512)  # x [m, k] @ w [n, k]^T: 67 MFLOP, under 1 ms per call in fp32 on one core


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@cache
def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), with its x86 family and model numbers, or the platform's processor."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines() if ":" in line)
    except OSError:
        return platform.processor() or platform.machine()
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    name = fields.get("model name", platform.machine())
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return name


def host_isa() -> str:
    """The best `ISA_LEVELS` entry this CPU has (the kernels' own CPUID check agrees: tests compare them)."""
    flags = cpu_flags()
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "i386") or not {"avx2", "fma"} <= flags:
        return "baseline"
    if not {"avx512f", "avx512bw"} <= flags:
        return "avx2"
    return "avx512_bf16" if "avx512_bf16" in flags else "avx512"


def isa_cap() -> str | None:
    """The level COBRA_CPU_ISA caps the kernels and the dtype choice at, or None."""
    cap = os.environ.get(ISA_ENV, "").strip().lower()
    if not cap:
        return None
    if cap not in ISA_LEVELS:
        raise ValueError(f"{ISA_ENV}={cap!r}: use one of {', '.join(ISA_LEVELS)}")
    return cap


def effective_isa() -> str:
    """The level the kernels run at: this CPU's, capped by COBRA_CPU_ISA."""
    cap = isa_cap()
    host = host_isa()
    return host if cap is None else ISA_LEVELS[min(ISA_LEVELS.index(host), ISA_LEVELS.index(cap))]


@dataclass(frozen=True)
class MatmulProbe:
    """GFLOP/s of one `PROBE_SHAPE` product in each dtype on one thread (best of a few, timed in turns)."""

    bf16_gflops: float
    fp32_gflops: float

    @property
    def bf16_speedup(self) -> float:
        return self.bf16_gflops / self.fp32_gflops


def probe_matmul(repeats: int = 4) -> MatmulProbe:
    """Time bf16 and fp32 `PROBE_SHAPE` products in turns on one thread, in that thread's CPU time; the best of
    `repeats` each (the first round includes oneDNN's one-off kernel generation)."""
    m, k, n = PROBE_SHAPE
    g = torch.Generator().manual_seed(0)
    operands = {dt: (torch.randn(m, k, generator=g).to(dt), torch.randn(n, k, generator=g).to(dt))
                for dt in (torch.bfloat16, torch.float32)}
    best = {dt: float("inf") for dt in operands}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(repeats):
            for dt, (x, w) in operands.items():
                start = time.thread_time()
                F.linear(x, w)
                best[dt] = min(best[dt], max(time.thread_time() - start, 1e-6))
    finally:
        torch.set_num_threads(threads)
    gflops = {dt: 2 * m * k * n / s / 1e9 for dt, s in best.items()}
    return MatmulProbe(gflops[torch.bfloat16], gflops[torch.float32])


@dataclass(frozen=True)
class Bf16Verdict:
    """Whether bf16 arithmetic is fast on this CPU, and why (for the model panel, the bench and the log)."""

    fast: bool
    reason: str


@cache
def bf16_verdict() -> Bf16Verdict:
    """Decided once per process: from the features on x86 without AVX-512 BF16 (capped ones included), else from
    `probe_matmul` (bf16 at least BF16_MIN_SPEEDUP x fp32)."""
    isa = effective_isa()
    if host_isa() != "baseline" and isa != "avx512_bf16":
        capped = f" ({ISA_ENV}={isa_cap()})" if isa_cap() else ""
        return Bf16Verdict(False, f"{isa} CPU{capped} without AVX-512 BF16: torch's bf16 matmul is slow there")
    probe = probe_matmul()
    verdict = "fast" if probe.bf16_speedup >= BF16_MIN_SPEEDUP else "slow"
    return Bf16Verdict(verdict == "fast", f"bf16 matmul {verdict} here: {probe.bf16_gflops:.0f} GFLOP/s against "
                                          f"{probe.fp32_gflops:.0f} in fp32 on one core (measured, {isa})")
