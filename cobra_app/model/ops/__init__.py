"""One interface, several implementations of Mamba's sequence operators.

`get_ops(device)` returns the mamba-ssm/causal-conv1d kernels on a CUDA device where they import, the compiled CPU
kernels (`cpu_kernel`: loaded from their build cache, built on first use or in the background, see there) on a CPU
device where they compile, and the plain PyTorch operators everywhere else. Each path is logged when first selected.

Environment: COBRA_OPS=torch forces the plain PyTorch operators on every device (read at each `get_ops` call).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import cache
from typing import Callable

import torch
from torch import Tensor

from cobra_app.model.ops import torch_ops

log = logging.getLogger(__name__)

ConvFn = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
ScanFn = Callable[..., tuple[Tensor, Tensor]]
LinearFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]  # (x, weight, int8 weights' scales or None) -> y
# (hidden [B, d], per-layer weights, conv states, ssm states, eps) -> (hidden, residual, conv states, ssm states) | None
DecodeFn = Callable[..., tuple[Tensor, Tensor, list[Tensor], list[Tensor]] | None]
# The tensors of each layer `decode_layers` takes, in this order (decode_step_cpu.cpp's `Weight`); scales are None for
# float weights.
DECODE_WEIGHTS = ("norm", "in_proj", "in_proj_scale", "conv_w", "conv_b", "x_proj", "x_proj_scale", "dt_proj",
                  "dt_proj_scale", "dt_bias", "A", "D", "out_proj", "out_proj_scale")


@dataclass(frozen=True)
class MambaOps:
    """A named set of operators: `causal_conv1d(x, weight, bias, conv_state)`,
    `selective_scan(u, delta, A, B, C, D, z, delta_bias, ssm_state)` (see `torch_ops` for shapes), the bias-free
    projection `linear(x [..., K], weight [N, K], scale [N, groups] | None) -> [..., N]` in x's dtype for weights
    stored in x's dtype, bf16 or int8 with group scales (`torch_ops.linear` unless a kernel is faster), and
    optionally `decode_layers(hidden, weights, conv_states, ssm_states, eps)`: one decoding step of the whole layer
    stack in one call (`cpu_kernel.decode_layers`; weights: `DECODE_WEIGHTS` of every layer), equal to the unfused
    operators; it returns None for inputs it does not cover."""

    name: str
    causal_conv1d: ConvFn
    selective_scan: ScanFn
    linear: LinearFn = torch_ops.linear
    decode_layers: DecodeFn | None = None


TORCH_OPS = MambaOps("torch", torch_ops.causal_conv1d, torch_ops.selective_scan)


@cache
def cuda_kernel_ops() -> MambaOps | None:
    """The CUDA kernels, or None when `mamba_ssm`/`causal_conv1d` cannot be imported. Logged at INFO where they are
    simply not installed or there is no GPU, as a WARNING on a CUDA machine where they are installed but fail to
    import (an extension built for another torch, a missing dependency, mamba-ssm 2.3 importing Mamba2/Mamba3 and
    their Triton/TileLang kernels at package import): the model then runs on the slower PyTorch ops."""
    try:
        from cobra_app.model.ops import cuda_ops as kernels
    except Exception as exc:  # ImportError, or anything a package raises while importing
        not_installed = isinstance(exc, ModuleNotFoundError) and exc.name in ("causal_conv1d", "mamba_ssm")
        level = logging.WARNING if torch.cuda.is_available() and not not_installed else logging.INFO
        log.log(level, "mamba-ssm/causal-conv1d kernels unavailable, CUDA runs the PyTorch ops (%s: %s)",
                type(exc).__name__, exc)
        return None
    return MambaOps("cuda-kernels", kernels.causal_conv1d, kernels.selective_scan)


def _env_forces_torch() -> bool:
    return os.environ.get("COBRA_OPS", "").strip().lower() == "torch"


@cache
def _announce(name: str, device_type: str) -> None:
    log.info("Mamba ops path: %s on %s", name, device_type)


def _cpu_kernel_ops() -> MambaOps | None:
    from cobra_app.model.ops.cpu_kernel import cpu_kernel_ops  # it imports this module: not at the top

    return cpu_kernel_ops()


# device type -> the compiled operators for it (None where they are unavailable)
KERNELS: dict[str, Callable[[], MambaOps | None]] = {"cuda": cuda_kernel_ops, "cpu": _cpu_kernel_ops}


def get_ops(device: torch.device | str, prefer_kernels: bool = True) -> MambaOps:
    """The operators to run on `device`: its compiled kernels (`KERNELS`) when available (and preferred, and
    COBRA_OPS is not "torch"), else PyTorch."""
    device = torch.device(device)
    compiled = KERNELS.get(device.type) if prefer_kernels and not _env_forces_torch() else None
    ops = (compiled() if compiled else None) or TORCH_OPS
    _announce(ops.name, device.type)
    return ops
