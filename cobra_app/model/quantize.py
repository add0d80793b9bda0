"""int8 weight-only quantisation of the language model's projections (`load(..., dtype="int8")`, CPU).

Each output row n of a weight [N, K] gets one fp32 scale s_n = max_k |w_nk| / 127 (symmetric, per output channel) and
int8 values q_nk = round(w_nk / s_n), so w ~ q * s with an error of at most s_n / 2 per weight. Every matrix a decode
step reads is quantised: each layer's in_proj, x_proj, dt_proj and out_proj, and the LM head (untied: the embedding
keeps its float rows for the lookup, one row per token). The vision tower and projector stay as they are. A weight
stays in its layer's `weight` (an int8 parameter without gradient), its scales in the `weight_scale` buffer;
`ops.linear` reads both (`mamba.project`).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from cobra_app.model.mamba import MambaLM

QMAX = 127
QUANTIZED_LAYERS = ("in_proj", "x_proj", "dt_proj", "out_proj")  # per mixer; and the LM head


def quantize_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
    """weight [N, K] (any float dtype) -> (q [N, K] int8 in [-127, 127], scale [N] fp32), weight ~ q * scale[:, None].
    An all-zero row gets scale 1. Computed in fp32, a block of rows at a time (no fp32 copy of the whole matrix)."""
    q = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scale = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    rows = max(1, (16 << 20) // (4 * weight.shape[1]))
    for n in range(0, weight.shape[0], rows):
        block = weight[n : n + rows].float()
        s = block.abs().amax(dim=1) / QMAX
        s = torch.where(s > 0, s, torch.ones_like(s))
        q[n : n + rows] = torch.round(block / s[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
        scale[n : n + rows] = s
    return q, scale


def quantize_linear_(layer: nn.Linear) -> None:
    """Replace `layer.weight` by its int8 rows and register their scales as `layer.weight_scale`, in place. The layer
    is then for `ops.linear` only (its forward would not apply the scales)."""
    q, scale = quantize_rows(layer.weight.detach())
    layer.weight = nn.Parameter(q, requires_grad=False)
    layer.register_buffer("weight_scale", scale)


def quantize_lm_(lm: MambaLM) -> MambaLM:
    """int8 projections in every layer of `lm` and an int8 LM head, in place. Returns lm."""
    for block in lm.backbone.layers:
        for name in QUANTIZED_LAYERS:
            quantize_linear_(getattr(block.mixer, name))
    quantize_linear_(lm.lm_head)  # a new parameter: the embedding keeps the float rows
    return lm


def quantized_copy(lm: MambaLM) -> MambaLM:
    """A copy of `lm` with int8 projections and LM head that shares every other tensor with it (the benchmark
    decodes both in turns: the copy costs the int8 matrices only)."""
    shared = {id(t): t for t in (*lm.parameters(), *lm.buffers())}
    twin = copy.deepcopy(lm, memo=dict(shared))
    return quantize_lm_(twin)
