"""Selective scan on CPU: the PyTorch reference against the compiled kernel (`python -m cobra_app.bench.scan_kernel`).

Two workloads, medians of a few repeats (kernel compile/load is timed separately, before):
- Cobra-3B prefill, one layer: B=1, D=5120, N=16, L=760, forward only (fp32 and bf16 inputs);
- demo-model training step: B=32, D=512, N=16, L=112, forward + backward.
Runs on torch's current thread count (set OMP_NUM_THREADS to change it). Prints wall-clock medians and, in
brackets, process CPU time (all threads), which is the steadier figure on a shared machine.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch

from cobra_app.model.ops import cpu_kernel, torch_ops


def scan_inputs(Bsz: int, Dn: int, N: int, L: int, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs shaped and scaled like a Mamba layer after Mamba's initialisation (A = -(1..N), dt in [1e-3, 0.1])."""
    g = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.rand(Dn, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    return dict(
        u=torch.randn(Bsz, Dn, L, generator=g).to(dtype),
        delta=(torch.randn(Bsz, Dn, L, generator=g) * 0.5).to(dtype),
        A=-torch.arange(1, N + 1, dtype=torch.float32).repeat(Dn, 1),
        B=torch.randn(Bsz, N, L, generator=g).to(dtype),
        C=torch.randn(Bsz, N, L, generator=g).to(dtype),
        D=torch.ones(Dn),
        z=torch.randn(Bsz, Dn, L, generator=g).to(dtype),
        delta_bias=dt + torch.log(-torch.expm1(-dt)),
        ssm_state=torch.randn(Bsz, Dn, N, generator=g) * 0.1,
    )


def median_time(fn: Callable[[], object], repeats: int, warmup: bool = True) -> tuple[float, float]:
    """Medians of `repeats` calls (after one warm-up call): (wall seconds, process CPU seconds, all threads).

    CPU time is the steadier number on a shared machine: it does not count time spent waiting for a core.
    """
    if warmup:
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def forward_fn(scan, inputs: dict[str, torch.Tensor]) -> Callable[[], object]:
    def run():
        with torch.no_grad():
            return scan(**inputs)

    return run


def train_fn(scan, inputs: dict[str, torch.Tensor]) -> Callable[[], object]:
    leaves = {k: v.detach().requires_grad_(k != "ssm_state") for k, v in inputs.items()}

    def run():
        y, _ = scan(**leaves)
        y.float().square().mean().backward()
        for t in leaves.values():
            t.grad = None

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    start = time.perf_counter()
    if not cpu_kernel.load_kernel():
        raise SystemExit(f"kernel unavailable: {cpu_kernel.load_error()}")
    print(
        f"kernel load/compile: {time.perf_counter() - start:.1f} s, isa={cpu_kernel.isa()}, "
        f"threads={torch.get_num_threads()}, torch {torch.__version__}"
    )

    cases = [
        ("prefill fwd  B=1 D=5120 N=16 L=760 fp32", forward_fn, (1, 5120, 16, 760, torch.float32)),
        ("prefill fwd  B=1 D=5120 N=16 L=760 bf16", forward_fn, (1, 5120, 16, 760, torch.bfloat16)),
        ("train fwd+bwd B=32 D=512 N=16 L=112 fp32", train_fn, (32, 512, 16, 112, torch.float32)),
    ]
    print(f"{'case':42s} {'torch ms':>9s} {'kernel ms':>9s} {'speed-up':>8s}   (CPU ms: torch / kernel)")
    for name, make, shape in cases:
        inputs = scan_inputs(*shape)
        ref_wall, ref_cpu = median_time(make(torch_ops.selective_scan, inputs), args.repeats, warmup=False)
        ker_wall, ker_cpu = median_time(make(cpu_kernel.selective_scan, inputs), args.repeats)
        print(
            f"{name:42s} {ref_wall * 1e3:9.1f} {ker_wall * 1e3:9.1f} {ref_wall / ker_wall:7.1f}x"
            f"   ({ref_cpu * 1e3:.0f} / {ker_cpu * 1e3:.0f})"
        )


if __name__ == "__main__":
    main()
