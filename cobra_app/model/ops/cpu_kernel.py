"""Compiled CPU kernels; PyTorch ops remain the fallback: the selective scan and the causal conv (forward and backward,
`causal_conv_cpu.cpp`) and, for inference, the projections (`linear`, `linear_cpu.cpp`: matrix-vector kernels for
decoding, weights stored in bf16 or int8 computed in fp32 blocks for longer inputs) and a decode step of the whole layer
stack in one call (`decode_layers`, `decode_step_cpu.cpp`).

`selective_scan` has exactly the signature and semantics of `torch_ops.selective_scan` (fp32 math, y in u's dtype,
fp32 state) and is differentiable in every input (a `torch.autograd.Function` whose backward recomputes the states);
`causal_conv1d` those of `torch_ops.causal_conv1d` for fp32 inputs, likewise differentiable.

The library is built once per content (`cpu_build`: cached under a hash of its sources, flags, compiler, torch and
ISA) and afterwards only loaded (~0.1 s). Building it takes about a minute and needs a C++ compiler with OpenMP, and
ninja. `load_kernel()` builds it where needed and waits; `load_in_background()` (the app, at start) builds it in a
background process instead, and until it is ready `cpu_kernel_ops()` returns None so callers serve on the PyTorch
operators. When the build fails `load_error()` says why and callers use the PyTorch operators for good.

The baseline, AVX2 and AVX-512 variants are all in the library, the one for this CPU is picked at run time (`isa()`,
capped by COBRA_CPU_ISA, `cpu_capability`). Inputs the kernels do not cover (fp64, non-CPU tensors, d_state > 32)
go to `torch_ops`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from torch import Tensor

from cobra_app.model.ops import DECODE_WEIGHTS, MambaOps, cpu_build, torch_ops
from cobra_app.model.ops.cpu_capability import effective_isa, isa_cap

log = logging.getLogger(__name__)

MAX_STATE = 32  # d_state handled by the kernel (Mamba uses 16)
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BUILD_NICENESS = 10  # a background build yields the CPU to the requests it serves meanwhile
PACKAGE_ROOT = Path(__file__).resolve().parents[3]  # where `python -m cobra_app...` finds the package

_lock = threading.Lock()
_loaded = False  # the library is loaded and torch.ops.cobra_{cpu,scan,conv,linear,decode}.* registered
_error: str | None = None
_background: threading.Thread | None = None


def _load_library() -> None:
    """Load the cached build, building it first where there is none (minutes); apply COBRA_CPU_ISA."""
    global _loaded, _error
    start = time.perf_counter()
    try:
        library = cpu_build.cached_library()
        if library is None:
            library = cpu_build.build()
        torch.ops.load_library(str(library))
        if isa_cap() is not None:
            torch.ops.cobra_cpu.cap_isa(isa_cap())
        _loaded = True
        log.info("CPU kernels ready in %.1f s (%s, %s)", time.perf_counter() - start, isa(), library.parent.name)
    except Exception as exc:  # no compiler / ninja / headers, or a build error
        _error = f"{type(exc).__name__}: {exc}"
        log.warning("CPU kernels unavailable, using PyTorch ops (%s)", _error)


def load_kernel() -> bool:
    """Load the kernel library, building it first where it has not been built yet (waits for a background build);
    False, with `load_error()` set, on failure."""
    if _background is not None:
        _background.join()
    with _lock:
        if not _loaded and _error is None:
            _load_library()
        return _loaded


def _build_then_load() -> None:
    """The background thread: build in a child process at lower priority (in a session of its own, which it ends if
    this process exits first), then load the result here."""
    global _error
    start = time.perf_counter()
    command = [sys.executable, "-m", "cobra_app.model.ops.cpu_build", "--exit-with-parent", str(os.getpid())]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=PACKAGE_ROOT,
                          start_new_session=True, preexec_fn=lambda: os.nice(BUILD_NICENESS))
    with _lock:
        if done.returncode != 0:
            _error = f"the build failed: {(done.stderr or done.stdout).strip()[-2000:]}"
            log.warning("CPU kernels unavailable, staying on PyTorch ops (%s)", _error)
            return
        _load_library()
    if _loaded:
        log.info("CPU kernels built in the background in %.0f s: switching from PyTorch ops to them",
                 time.perf_counter() - start)


def load_in_background() -> None:
    """Make the kernels available without a compile on the caller's path: loaded now when a build is cached (~0.1 s),
    else built by a background process while `cpu_kernel_ops()` returns None (the PyTorch operators serve)."""
    global _background
    with _lock:
        if _loaded or _error is not None or _background is not None:
            return
        if cpu_build.cached_library() is None:
            log.info("CPU kernels not built yet for these sources: building them in the background (about a minute); "
                     "PyTorch ops serve meanwhile")
            _background = threading.Thread(target=_build_then_load, name="cpu-kernel-build", daemon=True)
            _background.start()
            return
    load_kernel()


def load_error() -> str | None:
    """Why the kernel could not be built or loaded (None when it loaded or was never tried)."""
    return _error


def status() -> str:
    """One line for the model panel and the bench: "ready (avx2)", "building in the background (PyTorch ops until
    then)", "unavailable (<why>)" or "not loaded"."""
    if _loaded:
        return f"ready ({isa()})"
    if _error is not None:
        return f"unavailable ({[line for line in _error.splitlines() if line.strip()][-1][:200]})"
    if _background is not None and _background.is_alive():
        return "building in the background (PyTorch ops until then)"
    return "not loaded"


def isa() -> str:
    """The kernel variant in use: "avx512_bf16", "avx512", "avx2" or "baseline" (`cpu_capability.ISA_LEVELS`)."""
    return str(torch.ops.cobra_cpu.isa()) if _loaded else effective_isa()


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
        and all(t.is_cpu for t in tensors)
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


class _CausalConv1d(torch.autograd.Function):
    """Kernel forward; backward recomputes the pre-activations (nothing but the inputs is saved)."""

    @staticmethod
    def forward(ctx, x, weight, bias, conv_state):  # type: ignore[override]
        ctx.save_for_backward(x, weight, bias, conv_state)
        return torch.ops.cobra_conv.causal_conv1d_fwd(x, weight, bias, conv_state)

    @staticmethod
    def backward(ctx, grad_y: Tensor, grad_state: Tensor):  # type: ignore[override]
        return torch.ops.cobra_conv.causal_conv1d_bwd(*ctx.saved_tensors, grad_y, grad_state)


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor, conv_state: Tensor) -> tuple[Tensor, Tensor]:
    """`torch_ops.causal_conv1d` on the compiled kernel (differentiable): x [B, D, L], weight [D, K], bias [D],
    conv_state [B, D, K] -> (silu(conv(x) + bias) [B, D, L], new conv_state [B, D, K]). fp32 CPU tensors only; other
    inputs (bf16 or fp16 activations, fp64 gradient checks, other devices) and an unloaded kernel go to `torch_ops`."""
    tensors = (x, weight, bias, conv_state)
    if not (_loaded and x.dim() == 3 and all(t.is_cpu and t.dtype == torch.float32 for t in tensors)):
        return torch_ops.causal_conv1d(*tensors)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _CausalConv1d.apply(*tensors)
    return torch.ops.cobra_conv.causal_conv1d_fwd(*tensors)


def linear(x: Tensor, weight: Tensor, scale: Tensor | None = None) -> Tensor:
    """`torch_ops.linear` (x [..., K], weight [N, K] in x's dtype, bf16 or int8 with scale [N, groups] -> [..., N] in
    x's dtype). Outside autograd, on CPU tensors, the library's `cobra_linear.linear` chooses: decode-sized products (up
    to 8 rows) on the matrix-vector kernels, longer ones on torch's matmul (in blocks where the weights are stored in
    another dtype)."""
    if (
        _loaded
        and x.device.type == weight.device.type == "cpu"
        and weight.dim() == 2
        and x.numel() > 0
        and x.dtype in _KERNEL_DTYPES
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    ):
        out = torch.ops.cobra_linear.linear(x.reshape(-1, x.shape[-1]), weight, scale)  # [rows, N]
        return out.reshape(*x.shape[:-1], weight.shape[0])
    return torch_ops.linear(x, weight, scale)


def decode_layers(
    hidden: Tensor, layers: list[Tensor | None], conv_states: list[Tensor], ssm_states: list[Tensor], eps: float
) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]] | None:
    """One decoding step of the whole layer stack in one kernel call (`decode_layers` in decode_step_cpu.cpp): per
    layer the residual add, RMSNorm, in_proj, the one-token conv, x_proj, dt_proj, the scan step and out_proj, the
    same operations in the same order and precision as the unfused path (so the same numbers), without a Python call
    for each.

    hidden [M, d] (the embedded tokens, compute dtype); layers: `DECODE_WEIGHTS` of each layer in order (scales None
    for float weights); conv_states [M, D, K] and ssm_states [M, D, N] fp32 per layer -> (hidden [M, d], residual
    [M, d] fp32 after the last layer, new conv_states, new ssm_states), or None where the kernel does not apply
    (autograd, non-CPU tensors, d_state > MAX_STATE, the library not loaded)."""
    tensors = (hidden, *conv_states, *ssm_states, *(t for t in layers if t is not None))
    A = layers[DECODE_WEIGHTS.index("A")]
    if not _kernel_applies(hidden, A, tensors) or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        return None
    residual = torch.zeros_like(hidden, dtype=torch.float32)
    return torch.ops.cobra_decode.decode_layers(hidden, residual, layers, conv_states, ssm_states, eps)


KERNEL_OPS = MambaOps("cpu-kernel", causal_conv1d, selective_scan, linear, decode_layers)


def cpu_kernel_ops() -> MambaOps | None:
    """The kernel conv, scan, projections and fused decode step; None when the kernels cannot be built here, or while
    a background build (`load_in_background`) is running."""
    if _background is not None and _background.is_alive():
        return None
    return KERNEL_OPS if load_kernel() else None
