"""Mamba's two sequence operators and the projections in plain PyTorch (every device; differentiable).

Shapes follow mamba_ssm's kernels so both implementations share one interface:
B = batch, D = d_inner (channels), L = chunk length, N = d_state, K = d_conv.
All arithmetic is fp32 (fp64 for fp64 inputs, which gradient checks use); outputs are cast back to the input dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


# Time steps processed per block of the scan: bounds the [B, T, D, N] temporaries (memory) for long chunks.
SCAN_BLOCK = 256
# int8 weights: consecutive weights of a row that share one scale (the last group of a row may be shorter);
# linear_cpu_kernels.h's kQ8Group.
INT8_GROUP = 32
# Bytes of weights converted to the input's dtype at a time, for weights stored in another dtype (as linear_cpu.cpp).
LINEAR_BLOCK_BYTES = 4 << 20


def dequantize(weight: Tensor, scale: Tensor | None, dtype: torch.dtype) -> Tensor:
    """weight [N, K] (int8 with bf16 scale [N, ceil(K / INT8_GROUP)], or a float dtype) -> the weights it stands
    for, in `dtype` (int8: w * the scale of its group, computed in fp32)."""
    if scale is None:
        return weight.to(dtype)
    per_weight = scale.float().repeat_interleave(INT8_GROUP, dim=1)[:, : weight.shape[1]]  # [N, K]
    return (weight.float() * per_weight).to(dtype)


def linear(x: Tensor, weight: Tensor, scale: Tensor | None = None) -> Tensor:
    """x [..., K] @ weight [N, K]^T -> [..., N] in x's dtype, with weights stored in x's dtype, another float dtype
    (bf16 under fp32 arithmetic) or int8 with group `scale` [N, ceil(K / INT8_GROUP)] (`cobra_app.model.quantize`).
    Weights in another dtype are converted LINEAR_BLOCK_BYTES at a time: the memory of a full-precision copy is never
    needed."""
    if scale is None and weight.dtype == x.dtype:
        return F.linear(x, weight)
    rows = max(64, LINEAR_BLOCK_BYTES // (weight.shape[1] * x.element_size()))
    return torch.cat([F.linear(x, dequantize(weight[n : n + rows], None if scale is None else scale[n : n + rows],
                                             x.dtype))
                      for n in range(0, weight.shape[0], rows)], dim=-1)


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor, conv_state: Tensor) -> tuple[Tensor, Tensor]:
    """Depthwise causal conv + SiLU that continues from `conv_state`.

    x [B, D, L] new pre-conv inputs; weight [D, K]; bias [D]; conv_state [B, D, K] the last K inputs seen before x
    (zeros at the start of a sequence). Returns (silu(conv(x) + bias) [B, D, L] in x.dtype, new conv_state [B, D, K]).
    """
    k, f, L = weight.shape[-1], _compute_dtype(x), x.shape[-1]
    history = torch.cat([conv_state.to(x.dtype), x], dim=-1)  # [B, D, K + L]
    if L == 1:  # decoding: the output is the dot product of the last K inputs with the kernel (fewer ops)
        y = (history[..., 1:].to(f) * weight.to(f)).sum(-1, keepdim=True) + bias.to(f)[:, None]  # [B, D, 1]
        return F.silu(y).to(x.dtype), history[..., -k:]
    window = history[..., 1:].to(f)  # output t sees inputs t-K+1 .. t: [B, D, K - 1 + L]
    w = weight.to(f)
    # K shifted multiply-adds (torch's depthwise conv1d is pathologically slow on CPU for this shape)
    y = bias.to(f)[:, None] + sum(w[:, i, None] * window[..., i : i + L] for i in range(k))  # [B, D, L]
    return F.silu(y).to(x.dtype), history[..., -k:]


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
    """Selective scan started from `ssm_state`, with mamba_ssm's `selective_scan_fn` semantics.

    u, delta, z [B, D, L]; A [D, N]; B, C [B, N, L]; D, delta_bias [D]; ssm_state [B, D, N] fp32.
        delta_t = softplus(delta_t + delta_bias)
        s_t = exp(delta_t * A) * s_{t-1} + delta_t * u_t * B_t
        y_t = (C_t . s_t + D * u_t) * silu(z_t)
    Returns (y [B, D, L] in u.dtype, s_L [B, D, N] fp32).
    """
    f = _compute_dtype(u)
    u32, A = u.to(f), A.to(f)
    dt = F.softplus(delta.to(f) + delta_bias.to(f)[:, None])  # [B, D, L]
    Bt = B.to(f).transpose(1, 2)  # [B, L, N]
    Ct = C.to(f).transpose(1, 2)  # [B, L, N]
    s = ssm_state.to(f)
    ys = []
    for start in range(0, u.shape[-1], SCAN_BLOCK):
        t = slice(start, start + SCAN_BLOCK)
        dt_blk = dt[..., t].transpose(1, 2)  # [B, T, D]
        decay = torch.exp(dt_blk[..., None] * A)  # [B, T, D, N]
        drive = (dt_blk * u32[..., t].transpose(1, 2))[..., None] * Bt[:, t, None, :]  # [B, T, D, N]
        states = []
        for decay_t, drive_t in zip(decay.unbind(1), drive.unbind(1)):  # unbind: one backward op, not one per step
            s = decay_t * s + drive_t  # [B, D, N]
            states.append(s)
        hs = torch.stack(states, dim=1)  # [B, T, D, N]
        ys.append(torch.einsum("btdn,btn->bdt", hs, Ct[:, t]))  # [B, D, T]
    y = torch.cat(ys, dim=-1) + D.to(f)[:, None] * u32  # [B, D, L]
    y = y * F.silu(z.to(f))
    return y.to(u.dtype), s
