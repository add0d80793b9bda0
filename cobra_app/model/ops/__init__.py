"""One interface, two implementations of Mamba's sequence operators.

`get_ops(device)` returns the mamba-ssm/causal-conv1d kernels on a CUDA device where they import, and the plain
PyTorch operators everywhere else. The first selection for each path is logged once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from typing import Callable

import torch
from torch import Tensor

from cobra_app.model.ops import torch_ops

log = logging.getLogger(__name__)

ConvFn = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
ScanFn = Callable[..., tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class MambaOps:
    """A named pair of operators: `causal_conv1d(x, weight, bias, conv_state)` and
    `selective_scan(u, delta, A, B, C, D, z, delta_bias, ssm_state)` (see `torch_ops` for shapes)."""

    name: str
    causal_conv1d: ConvFn
    selective_scan: ScanFn


TORCH_OPS = MambaOps("torch", torch_ops.causal_conv1d, torch_ops.selective_scan)


@cache
def cuda_ops() -> MambaOps | None:
    """The CUDA kernels, or None when `mamba_ssm`/`causal_conv1d` cannot be imported (no CUDA, not installed)."""
    try:
        from cobra_app.model.ops import cuda_ops as kernels
    except Exception as exc:  # ImportError, or the compiled extension failing to load without CUDA
        log.info("mamba-ssm/causal-conv1d kernels unavailable (%s: %s)", type(exc).__name__, exc)
        return None
    return MambaOps("cuda-kernels", kernels.causal_conv1d, kernels.selective_scan)


@cache
def _announce(name: str, device_type: str) -> None:
    log.info("Mamba ops path: %s on %s", name, device_type)


def get_ops(device: torch.device | str, prefer_kernels: bool = True) -> MambaOps:
    """The operators to run on `device`: CUDA kernels when available there (and preferred), else PyTorch."""
    device = torch.device(device)
    ops = (cuda_ops() if device.type == "cuda" and prefer_kernels else None) or TORCH_OPS
    _announce(ops.name, device.type)
    return ops
