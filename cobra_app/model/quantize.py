"""int8 weight-only quantisation of the language model's projections (`load(..., dtype="int8")`, CPU).

Each row n of a weight [N, K] is cut into groups of INT8_GROUP (32) consecutive weights (the last may be shorter), as
llama.cpp's Q8_0; group g gets one bf16 scale s_ng >= max |w| / 127 over the group (the nearest bf16 at or above it,
so no weight is clipped) and int8 values q_nk = round(w_nk / s_ng): w ~ q * s with an error of at most s_ng / 2 per
weight. A scale per group, not per row: at cobra+3b sizes, where a row's largest of 2560-5120 weights set the step,
last-position logits moved 2.5% of their norm; with 32-weight groups 1.7% (docs/PERFORMANCE.md, "int8 accuracy").
The scales cost 1/16 more bytes. Every matrix a decode step reads is quantised: each layer's in_proj, x_proj, dt_proj
and out_proj, and the LM head (untied: the embedding keeps its float rows for the lookup, one row per token). The
vision tower and projector stay as they are. A weight stays in its layer's `weight` (an int8 parameter without
gradient), its scales [N, ceil(K / 32)] in the `weight_scale` buffer; `ops.linear` reads both (`mamba.project`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cobra_app.model.mamba import MambaLM
from cobra_app.model.ops.torch_ops import INT8_GROUP

QMAX = 127
QUANTIZED_LAYERS = ("in_proj", "x_proj", "dt_proj", "out_proj")  # per mixer; and the LM head


def bf16_at_least(value: Tensor) -> Tensor:
    """Positive fp32 `value` -> the smallest bf16 >= it (rounded to nearest, then one bf16 step up where below)."""
    rounded = value.to(torch.bfloat16)
    below = rounded.float() < value
    return torch.where(below, (rounded.view(torch.int16) + 1).view(torch.bfloat16), rounded)


def quantize_groups(weight: Tensor) -> tuple[Tensor, Tensor]:
    """weight [N, K] (any float dtype) -> (q [N, K] int8 in [-127, 127], scale [N, G] bf16), G = ceil(K / INT8_GROUP),
    weight[n, k] ~ q[n, k] * scale[n, k // INT8_GROUP]. An all-zero group gets scale 1. Computed in fp32, a block of
    rows at a time (no fp32 copy of the whole matrix)."""
    N, K = weight.shape
    G = -(-K // INT8_GROUP)
    q = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scale = torch.empty(N, G, dtype=torch.bfloat16, device=weight.device)
    rows = max(1, (16 << 20) // (4 * G * INT8_GROUP))
    for n in range(0, N, rows):
        block = F.pad(weight[n : n + rows].float(), (0, G * INT8_GROUP - K))  # zeros fill the short last group
        groups = block.view(block.shape[0], G, INT8_GROUP)  # [rows, G, INT8_GROUP]
        peak = groups.abs().amax(dim=2)  # [rows, G]
        s = bf16_at_least(torch.where(peak > 0, peak / QMAX, torch.ones_like(peak)))
        values = torch.round(groups / s.float()[..., None]).clamp_(-QMAX, QMAX).to(torch.int8)
        q[n : n + rows] = values.view(block.shape)[:, :K]
        scale[n : n + rows] = s
    return q, scale


def quantize_linear_(layer: nn.Linear) -> None:
    """Replace `layer.weight` by its int8 values and register their group scales as `layer.weight_scale`, in place.
    The layer is then for `ops.linear` only (its forward would not apply the scales)."""
    q, scale = quantize_groups(layer.weight.detach())
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
