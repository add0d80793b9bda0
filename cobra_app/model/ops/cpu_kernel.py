"""Compiled CPU kernels, built on first use; PyTorch ops remain the fallback: the selective scan (forward and backward)
and, for decoding, bf16 matrix-vector products (`linear`, `linear_cpu.cpp`) and a fused one-token mixer step
(`mixer_step`: conv update, x_proj, dt_proj and the scan step in one call).

`selective_scan` has exactly the signature and semantics of `torch_ops.selective_scan` (fp32 math, y in u's dtype,
fp32 state) and is differentiable in every input (a `torch.autograd.Function` whose backward recomputes the states).
The kernel (`selective_scan_cpu.cpp` and `selective_scan_cpu_kernels.h`, next to this file) is compiled with
`torch.utils.cpp_extension.load` the first time `cpu_kernel_ops()` or `load_kernel()` is called, and cached by torch's
extension cache (TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions) under a stable name, so later processes
only load it (~0.1 s). It needs a C++ compiler with OpenMP, and ninja; when the build fails `cpu_kernel_ops()`
returns None, `load_error()` says why, and callers use the PyTorch operators.

Compiled without -march: baseline, AVX2 and AVX-512 variants are all in the library and the best one for the CPU is
picked at run time (`isa()`), so a cached build can move between machines. Inputs the kernel does not cover (fp64,
non-CPU tensors, d_state > 32) go to `torch_ops.selective_scan`.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from cobra_app.model.ops import MambaOps, torch_ops

log = logging.getLogger(__name__)

EXTENSION_NAME = "cobra_selective_scan_cpu"
SOURCES = [Path(__file__).with_name(name) for name in ("selective_scan_cpu.cpp", "linear_cpu.cpp")]
# No -march: the AVX2 and AVX-512 kernels are compiled under `#pragma GCC target` and chosen by CPUID at run time.
CFLAGS = ["-O3", "-fopenmp", "-ffp-contract=fast", "-Wno-psabi"]
LDFLAGS = ["-fopenmp"]
MAX_STATE = 32  # d_state handled by the kernel (Mamba uses 16)
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_lock = threading.Lock()
_loaded = False  # the library is loaded and torch.ops.cobra_scan.* registered
_error: str | None = None


def load_kernel() -> bool:
    """Compile (first time on this machine) and load the kernel library; False, with `load_error()` set, on failure."""
    global _loaded, _error
    with _lock:
        if _loaded:
            return True
        if _error is not None:
            return False
        try:
            from torch.utils.cpp_extension import load

            start = time.perf_counter()
            load(
                name=EXTENSION_NAME,
                sources=[str(path) for path in SOURCES],
                extra_cflags=CFLAGS,
                extra_ldflags=LDFLAGS,
                with_cuda=False,
                is_python_module=False,
                verbose=False,
            )
            _loaded = True
            log.info("CPU selective-scan kernel ready in %.1f s (%s)", time.perf_counter() - start, isa())
            return True
        except Exception as exc:  # no compiler / ninja / headers, or a build error
            _error = f"{type(exc).__name__}: {exc}"
            log.warning("CPU selective-scan kernel unavailable, using PyTorch ops (%s)", _error)
            return False


def load_error() -> str | None:
    """Why the kernel could not be built or loaded (None when it loaded or was never tried)."""
    return _error


def isa() -> str:
    """The kernel variant in use, chosen from the CPU at run time: "avx512", "avx2" or "baseline"."""
    return str(torch.ops.cobra_scan.isa())


class _SelectiveScan(torch.autograd.Function):
    """Kernel forward; backward recomputes the states per channel (nothing but the inputs is saved)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, ssm_state):  # type: ignore[override]
        y, last_state = torch.ops.cobra_scan.selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, ssm_state)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ssm_state)
        return y, last_state

    @staticmethod
    def backward(ctx, grad_y: Tensor, grad_state: Tensor):  # type: ignore[override]
        inputs = ctx.saved_tensors
        grads = torch.ops.cobra_scan.selective_scan_bwd(*inputs, grad_y, grad_state)  # fp32, shaped like inputs
        return tuple(g.to(x.dtype) for g, x in zip(grads, inputs, strict=True))


def _kernel_applies(u: Tensor, A: Tensor, tensors: tuple[Tensor, ...]) -> bool:
    """Whether the compiled scan covers these inputs: u's dtype, CPU tensors, A [D, N] with N <= MAX_STATE."""
    return (
        u.dtype in _KERNEL_DTYPES
        and all(t.device.type == "cpu" for t in tensors)
        and A.dim() == 2
        and 1 <= A.shape[-1] <= MAX_STATE
        and _loaded
    )


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    z: Tensor,
    delta_bias: Tensor,
    ssm_state: Tensor,
) -> tuple[Tensor, Tensor]:
    """`torch_ops.selective_scan` on the compiled kernel (differentiable).

    u, delta, z [B, D, L]; A [D, N]; B, C [B, N, L]; D, delta_bias [D]; ssm_state [B, D, N].
    Returns (y [B, D, L] in u.dtype, s_L [B, D, N] fp32). Falls back to `torch_ops` for inputs the kernel does not
    cover (fp64 u, non-CPU tensors, N > 32) or when the kernel is not loaded.
    """
    tensors = (u, delta, A, B, C, D, z, delta_bias, ssm_state)
    if not _kernel_applies(u, A, tensors):
        return torch_ops.selective_scan(*tensors)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _SelectiveScan.apply(*tensors)
    y, last_state = torch.ops.cobra_scan.selective_scan_fwd(*tensors)
    return y, last_state


def linear(x: Tensor, weight: Tensor) -> Tensor:
    """F.linear(x, weight) (no bias): x [..., K], weight [N, K] -> [..., N]. Outside autograd, on CPU tensors, the
    library's `cobra_linear.linear` chooses: decode-sized bf16 products (up to 8 rows) on the AVX-512 BF16 kernel
    where the CPU has it (fp32 accumulation, one rounding to bf16, as F.linear), everything else at::linear."""
    if (
        _loaded
        and x.device.type == weight.device.type == "cpu"
        and weight.dim() == 2
        and x.numel() > 0
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    ):
        out = torch.ops.cobra_linear.linear(x.reshape(-1, x.shape[-1]), weight)  # [rows, N]
        return out.reshape(*x.shape[:-1], weight.shape[0])
    return F.linear(x, weight)


def mixer_step(
    xz: Tensor,
    conv_state: Tensor,
    conv_w: Tensor,
    conv_b: Tensor,
    x_proj_w: Tensor,
    dt_proj_w: Tensor,
    dt_bias: Tensor,
    A: Tensor,
    D: Tensor,
    ssm_state: Tensor,
) -> tuple[Tensor, Tensor, Tensor] | None:
    """One decoding step of a mixer between in_proj and out_proj in one kernel call (`mixer_step` in
    selective_scan_cpu.cpp): the one-token conv, x_proj, dt_proj and the scan step, the same operations in the same
    order and precision as the unfused operators (so the same numbers), without a Python call for each.

    xz [M, 2D] in_proj's output; conv_state [M, D, K]; conv_w [D, K]; conv_b, dt_bias, D [D]; x_proj_w [R + 2N, D];
    dt_proj_w [D, R]; A [D, N]; ssm_state [M, D, N] fp32 -> (y [M, D], new conv_state, new ssm_state), or None where
    the kernel does not apply (autograd, non-CPU tensors, d_state > MAX_STATE, the library not loaded)."""
    tensors = (xz, conv_state, conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, A, D, ssm_state)
    if not _kernel_applies(xz, A, tensors) or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        return None
    return torch.ops.cobra_scan.mixer_step(*tensors)


@cache
def cpu_kernel_ops() -> MambaOps | None:
    """The kernel scan, decode projections and fused decode step with the PyTorch conv, or None when the kernels
    cannot be built here."""
    if not load_kernel():
        return None
    return MambaOps("cpu-kernel", torch_ops.causal_conv1d, selective_scan, linear, mixer_step)
