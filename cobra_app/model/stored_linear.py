"""Linear layers whose weights are stored in a narrower dtype than their arithmetic: bf16 weights multiplied in fp32
on CPUs whose bf16 matmul is slow (half the memory of fp32 weights, fp32's speed and accuracy).

`cast_module(module, weights, compute)` puts a module (the vision tower, the projector) in `compute` and, where
`weights` differs, turns each `nn.Linear` into a `StoredLinear` that keeps its weight in `weights`. The product is
the device's `MambaOps.linear` (the CPU kernels convert a block of weight rows at a time to fp32 and use torch's fp32
matmul); the state dict is unchanged (same names and shapes).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cobra_app.model.ops import get_ops


class StoredLinear(nn.Linear):
    """nn.Linear with its weight in another dtype than its input: y = x @ W^T + b in x's dtype."""

    def forward(self, x: Tensor) -> Tensor:
        y = get_ops(x.device).linear(x, self.weight, None)
        return y if self.bias is None else y + self.bias


def _store_linears(module: nn.Module) -> None:
    """Every nn.Linear below `module` becomes a StoredLinear holding the same parameters (in place)."""
    for name, child in module.named_children():
        if type(child) is nn.Linear:
            stored = StoredLinear(child.in_features, child.out_features, bias=child.bias is not None, device="meta")
            stored.weight, stored.bias = child.weight, child.bias
            setattr(module, name, stored)
        else:
            _store_linears(child)


def cast_module(module: nn.Module, weights: torch.dtype, compute: torch.dtype) -> nn.Module:
    """Parameters and float buffers in `compute`, except the Linear weights, kept in `weights` (StoredLinear) when it
    differs from `compute`. Returns module."""
    if weights == compute:
        return module.to(compute)
    _store_linears(module)
    for layer in module.modules():
        for name, p in layer.named_parameters(recurse=False):
            p.data = p.data.to(weights if isinstance(layer, StoredLinear) and name == "weight" else compute)
        for name, b in layer.named_buffers(recurse=False):
            if b.is_floating_point():
                setattr(layer, name, b.to(compute))
    return module
