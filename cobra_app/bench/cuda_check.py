"""CUDA kernels vs the PyTorch reference, on random inputs: `python -m cobra_app.bench.cuda_check [--out FILE]`.

Needs a CUDA device with `mamba-ssm` and `causal-conv1d` installed. Compares, per operator and for a whole MambaLM:
a full pass, a continuation from a non-zero saved state (multi-token chunk) and single-token decode steps,
and decode steps replayed from CUDA graphs against eager ones.
Prints a table and writes it as Markdown (default docs/CUDA_CHECK.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from cobra_app.model.mamba import MambaConfig, MambaLM
from cobra_app.model.ops import TORCH_OPS, cuda_ops

# Relative error bounds: fp32 kernels reorder sums (1e-4); bf16 model outputs carry bf16 rounding (3e-2).
BOUNDS = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def op_cases(kernels, device: str) -> list[tuple[str, float, torch.dtype]]:
    """Each operator, kernels vs torch, from a non-zero state, for chunk lengths 1 (decode), 3 (< d_conv) and 300."""
    g = torch.Generator(device=device).manual_seed(0)
    rows = []
    Bn, D, N, K = 2, 64, 16, 4
    for L in (1, 3, 300):
        x = torch.randn(Bn, D, L, device=device, generator=g)
        w, b = torch.randn(D, K, device=device, generator=g), torch.randn(D, device=device, generator=g)
        conv_state = torch.randn(Bn, D, K, device=device, generator=g)
        (yk, sk), (yt, st) = (ops.causal_conv1d(x, w, b, conv_state) for ops in (kernels, TORCH_OPS))
        rows.append((f"causal_conv1d L={L}", max(rel_err(yk, yt), rel_err(sk, st)), torch.float32))
        scan_in = dict(
            u=torch.randn(Bn, D, L, device=device, generator=g),
            delta=torch.randn(Bn, D, L, device=device, generator=g),
            A=-torch.rand(D, N, device=device, generator=g) * 4,
            B=torch.randn(Bn, N, L, device=device, generator=g),
            C=torch.randn(Bn, N, L, device=device, generator=g),
            D=torch.randn(D, device=device, generator=g),
            z=torch.randn(Bn, D, L, device=device, generator=g),
            delta_bias=torch.randn(D, device=device, generator=g),
            ssm_state=torch.randn(Bn, D, N, device=device, generator=g),
        )
        (yk, sk), (yt, st) = (ops.selective_scan(**scan_in) for ops in (kernels, TORCH_OPS))
        rows.append((f"selective_scan L={L} (non-zero start)", max(rel_err(yk, yt), rel_err(sk, st)), torch.float32))
    return rows


def model_cases(kernels, device: str) -> list[tuple[str, float, torch.dtype]]:
    """A small MambaLM, kernels vs torch path on the same device: full pass, continuation, decode steps."""
    rows = []
    cfg = MambaConfig(d_model=256, n_layer=4, vocab_size=1000)
    for dtype in (torch.float32, torch.bfloat16):
        lm = MambaLM(cfg, device=device).init_weights(torch.Generator(device=device).manual_seed(0)).cast(dtype)
        ids = torch.randint(0, 1000, (2, 400), device=device, generator=torch.Generator(device=device).manual_seed(1))
        name = str(dtype).removeprefix("torch.")
        with torch.no_grad():
            outs = {}
            for ops in (kernels, TORCH_OPS):
                lm.ops_override = ops
                full, _ = lm(ids)
                head, state = lm(ids[:, :250])
                tail, state = lm(ids[:, 250:390], state=state)
                steps = []
                for t in range(390, 400):
                    logits, state = lm.step(ids[:, t], state)
                    steps.append(logits[:, None])
                outs[ops.name] = (full, torch.cat([head, tail] + steps, dim=1))
            (kf, kc), (tf, tc) = outs[kernels.name], outs[TORCH_OPS.name]
            lm.ops_override = kernels
            decoded = []
            for step in (lm.step, lm.eager_step):  # on CUDA, lm.step replays captured graphs (model/cuda_graph.py)
                _, state = lm(ids[:, :390])
                logits_per_step = []
                for t in range(390, 400):
                    logits, state = step(ids[:, t], state)
                    logits_per_step.append(logits)
                decoded.append(torch.stack(logits_per_step))
        rows.append((f"MambaLM {name}: full pass", rel_err(kf, tf), dtype))
        rows.append((f"MambaLM {name}: continuation + steps vs torch", rel_err(kc, tc), dtype))
        rows.append((f"MambaLM {name}: kernels continuation vs kernels full", rel_err(kc, kf), dtype))
        rows.append((f"MambaLM {name}: CUDA-graph decode steps vs eager steps", rel_err(*decoded), dtype))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/CUDA_CHECK.md"))
    args = parser.parse_args(argv)
    kernels = cuda_ops() if torch.cuda.is_available() else None
    if kernels is None:
        print("needs a CUDA device with mamba-ssm and causal-conv1d importable", file=sys.stderr)
        return 2
    rows = op_cases(kernels, "cuda") + model_cases(kernels, "cuda")
    lines = ["| check | max rel. error | bound | ok |", "|---|---|---|---|"]
    lines += [f"| {name} | {err:.2e} | {BOUNDS[dt]:.0e} | {'yes' if err <= BOUNDS[dt] else 'NO'} |" for name, err, dt in rows]
    table = "\n".join(lines)
    print(table)
    args.out.write_text(
        f"# CUDA kernels vs PyTorch ops\n\nDevice: {torch.cuda.get_device_name()}; torch {torch.__version__}.\n"
        f"Reproduce: `python -m cobra_app.bench.cuda_check`.\n\n{table}\n"
    )
    return 0 if all(err <= BOUNDS[dt] for _, err, dt in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
