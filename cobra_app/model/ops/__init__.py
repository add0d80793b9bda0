"""One interface, several implementations of Mamba's sequence operators.

`get_ops(device)` returns the mamba-ssm/causal-conv1d kernels on a CUDA device where they import, the compiled CPU
selective scan (`cpu_kernel`, built on first use) on a CPU device where it compiles, and the plain PyTorch operators
everywhere else. The first selection for each path is logged once.

Environment: COBRA_OPS=torch forces the plain PyTorch operators on every device (read at each `get_ops` call).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import cache
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from cobra_app.model.ops import torch_ops

log = logging.getLogger(__name__)

ConvFn = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
ScanFn = Callable[..., tuple[Tensor, Tensor]]
LinearFn = Callable[[Tensor, Tensor], Tensor]
# (xz, conv_state, conv_w, conv_b, x_proj_w, dt_proj_w, dt_bias, A, D, ssm_state) -> (y, conv_state, ssm_state) | None
MixerStepFn = Callable[..., tuple[Tensor, Tensor, Tensor] | None]


@dataclass(frozen=True)
class MambaOps:
    """A named set of operators: `causal_conv1d(x, weight, bias, conv_state)`,
    `selective_scan(u, delta, A, B, C, D, z, delta_bias, ssm_state)` (see `torch_ops` for shapes), the bias-free
    projection `linear(x [..., K], weight [N, K]) -> [..., N]` (F.linear unless a kernel is faster for decoding), and
    optionally `mixer_step`: a fused one-token mixer step from in_proj's output to out_proj's input
    (`cpu_kernel.mixer_step`), equal to the unfused operators; it returns None for inputs it does not cover."""

    name: str
    causal_conv1d: ConvFn
    selective_scan: ScanFn
    linear: LinearFn = F.linear
    mixer_step: MixerStepFn | None = None


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
