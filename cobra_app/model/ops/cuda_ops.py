"""Mamba's sequence operators on CUDA through the `causal_conv1d` and `mamba_ssm` kernels.

Same signatures and semantics as `torch_ops`. Neither kernel continues from a saved state with a multi-token chunk,
so both are wrapped to do so exactly:
- conv: the saved last K-1 inputs are prepended to the chunk and their K-1 outputs dropped;
- scan: the kernel runs from a zero state and the contribution of the saved state is added in closed form
  (the recurrence is linear in s): y_t += C_t . (exp(sum_{k<=t} delta_k A) * s_0), s_L += exp(sum_k delta_k A) * s_0.
This module imports the kernels at import time; `cobra_app.model.ops` imports it only when they are available.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from causal_conv1d import causal_conv1d_fn, causal_conv1d_update
from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
from mamba_ssm.ops.triton.selective_state_update import selective_state_update
from torch import Tensor


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor, conv_state: Tensor) -> tuple[Tensor, Tensor]:
    """x [B, D, L]; weight [D, K]; bias [D]; conv_state [B, D, K] -> (silu(conv) [B, D, L], new conv_state [B, D, K])."""
    k = weight.shape[-1]
    if x.shape[-1] == 1:  # decode: the kernel updates the state in place, so hand it a copy
        new_state = conv_state.to(x.dtype).clone()
        y = causal_conv1d_update(x[..., 0], new_state, weight, bias, activation="silu")
        return y[..., None], new_state
    history = torch.cat([conv_state.to(x.dtype), x], dim=-1)  # [B, D, K + L]
    y = causal_conv1d_fn(history[..., 1:].contiguous(), weight, bias, activation="silu")  # [B, D, K - 1 + L]
    return y[..., k - 1 :], history[..., -k:]


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
    """u, delta, z [B, D, L]; A [D, N]; B, C [B, N, L]; D, delta_bias [D]; ssm_state [B, D, N] fp32 -> (y, s_L)."""
    if u.shape[-1] == 1:  # decode: one fused state update (in place, so on a copy)
        new_state = ssm_state.float().clone()
        y = selective_state_update(
            new_state, u[..., 0], delta[..., 0], A, B[..., 0], C[..., 0], D, z=z[..., 0],
            dt_bias=delta_bias, dt_softplus=True,
        )
        return y[..., None], new_state
    y, last = selective_scan_fn(
        u, delta, A, B, C, D.float(), z=z, delta_bias=delta_bias.float(), delta_softplus=True, return_last_state=True
    )
    # Correction for a non-zero start state s_0 (exact: the scan is linear in s).
    dt = F.softplus(delta.float() + delta_bias.float()[:, None])  # [B, D, L]
    decay = torch.exp(torch.cumsum(dt, dim=-1)[..., None] * A.float()[:, None, :])  # [B, D, L, N] prod of exp(dt A)
    carried = decay * ssm_state.float()[:, :, None, :]  # [B, D, L, N]
    y_start = torch.einsum("bdln,bnl->bdl", carried, C.float())  # [B, D, L]
    y = (y.float() + y_start * F.silu(z.float())).to(u.dtype)
    return y, last.float() + carried[:, :, -1]
