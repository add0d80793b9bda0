"""Mamba's sequence operators on CUDA through the `causal_conv1d` and `mamba_ssm` kernels.

Same signatures and semantics as `torch_ops`. Where autograd would record the call (grad enabled and an input that
requires grad) the `torch_ops` run instead: the kernels ignore the gradient of the last state, and the two decode
kernels have no backward at all.

Continuing from a saved state with a multi-token chunk:
- conv: the saved last K-1 inputs are prepended to the chunk and their K-1 outputs dropped. (`causal_conv1d_fn` can
  start from `initial_states`, but only for channel-last input with D and the strides multiples of 8: that path would
  still need this one for other inputs, to save one [B, D, L] copy, small next to the scan.)
- scan: Mamba-1's `selective_scan_fn` takes no start state. It runs from zero and, when the saved state s_0 is not
  zero, s_0's contribution is added in closed form (the recurrence is linear in s), in fp32 before the one rounding
  of y to u's dtype, a block of time steps at a time:
      y_t += C_t . (exp(A sum_{k<=t} dt_k) * s_0) * silu(z_t),   s_L += exp(A sum_k dt_k) * s_0,
  with dt = softplus(delta + delta_bias).
Every sequence tensor reaches a multi-token kernel contiguous and 16-byte aligned: the kernels switch to 16-byte
vector loads when L is a multiple of their chunk (128, 256, 512, 1024 or 2048 steps for the scan) and check only unit
stride, not alignment (`selective_scan_fwd_kernel.cuh`).

This module imports the kernels at import time; `cobra_app.model.ops` imports it only when they are available.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from causal_conv1d import causal_conv1d_fn, causal_conv1d_update
from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
from mamba_ssm.ops.triton.selective_state_update import selective_state_update
from torch import Tensor

from cobra_app.model.ops import torch_ops

ALIGN_BYTES = 16  # the kernels' widest vector load
# Time steps per block of the start-state correction: its temporaries are [B, D, T, N] fp32, 84 MB per sequence at
# Cobra-3B sizes (D = 5120, N = 16), where the whole chunk at once would take 0.67 GB at L = 2048.
CORRECTION_BLOCK = 256


def aligned(t: Tensor) -> Tensor:
    """`t` itself when contiguous and 16-byte aligned, else a contiguous copy (fresh allocations are aligned)."""
    if t.is_contiguous() and t.data_ptr() % ALIGN_BYTES == 0:
        return t
    return t.clone(memory_format=torch.contiguous_format)


def records_grad(*tensors: Tensor) -> bool:
    """Whether autograd would record an operation on `tensors` (then the torch ops run, as in `cpu_kernel`)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor, conv_state: Tensor) -> tuple[Tensor, Tensor]:
    """x [B, D, L]; weight [D, K]; bias [D]; conv_state [B, D, K] -> (silu(conv) [B, D, L], new conv_state)."""
    if records_grad(x, weight, bias, conv_state):
        return torch_ops.causal_conv1d(x, weight, bias, conv_state)
    k = weight.shape[-1]
    if x.shape[-1] == 1:  # decode: the kernel updates the state in place, so hand it a copy
        new_state = conv_state.to(x.dtype).clone()
        y = causal_conv1d_update(x[..., 0], new_state, weight, bias, activation="silu")  # [B, D]
        return y[..., None], new_state
    history = torch.cat([conv_state[..., 1:].to(x.dtype), x], dim=-1)  # [B, D, K - 1 + L], a fresh aligned buffer
    y = causal_conv1d_fn(history, weight, bias, activation="silu")  # [B, D, K - 1 + L]
    # y[..., K-1:] starts K-1 elements into its rows (the scan copies it: `aligned`); the new state owns its memory
    return y[..., k - 1 :], history[..., -k:].clone()


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
    if records_grad(u, delta, A, B, C, D, z, delta_bias, ssm_state):
        return torch_ops.selective_scan(u, delta, A, B, C, D, z, delta_bias, ssm_state)
    if u.shape[-1] == 1:  # decode: one fused state update (in place, so on a copy)
        new_state = ssm_state.float().clone()
        y = selective_state_update(
            new_state, u[..., 0], delta[..., 0], A, B[..., 0], C[..., 0], D, z=z[..., 0],
            dt_bias=delta_bias, dt_softplus=True,
        )
        return y[..., None], new_state
    from_zero = not bool(ssm_state.any())  # one small device-to-host read per layer and chunk
    dtype = u.dtype if from_zero else torch.float32  # with a correction to add, the kernel's y stays in fp32
    u_, delta_, B_, C_, z_ = (aligned(t.to(dtype)) for t in (u, delta, B, C, z))
    y, last = selective_scan_fn(
        u_, delta_, A.float(), B_, C_, D.float(), z=z_, delta_bias=delta_bias.float(), delta_softplus=True,
        return_last_state=True,
    )  # y [B, D, L] in `dtype`; last [B, D, N] fp32, a view into the kernel's per-chunk states
    if from_zero:
        return y, last.clone()
    y_start, s_start = start_state_contribution(delta, delta_bias, A, C, ssm_state)
    return (y + y_start * F.silu(z.float())).to(u.dtype), last + s_start


def start_state_contribution(
    delta: Tensor, delta_bias: Tensor, A: Tensor, C: Tensor, s0: Tensor
) -> tuple[Tensor, Tensor]:
    """What a start state s0 adds to a scan run from zero, before the gate, in fp32:
    (y [B, D, L] with y_t = C_t . (exp(A sum_{k<=t} dt_k) * s0), s [B, D, N] = exp(A sum_k dt_k) * s0),
    dt = softplus(delta + delta_bias). delta [B, D, L]; delta_bias [D]; A [D, N]; C [B, N, L]; s0 [B, D, N].
    Works through CORRECTION_BLOCK time steps at a time: its temporaries are [B, D, T, N] whatever L."""
    A, C, s0 = A.float(), C.float(), s0.float()
    dt_sum = torch.cumsum(F.softplus(delta.float() + delta_bias.float()[:, None]), dim=-1)  # [B, D, L]
    y = torch.empty_like(dt_sum)
    for start in range(0, dt_sum.shape[-1], CORRECTION_BLOCK):
        t = slice(start, start + CORRECTION_BLOCK)
        carried = (dt_sum[..., t, None] * A[:, None, :]).exp_().mul_(s0[:, :, None, :])  # [B, D, T, N]
        y[..., t] = torch.einsum("bdtn,bnt->bdt", carried, C[..., t])
    return y, torch.exp(dt_sum[..., -1, None] * A) * s0
