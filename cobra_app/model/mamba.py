"""The Mamba language model, continuing exactly from any saved recurrent state.

Parameter names match mamba_ssm's `MambaLMHeadModel`, so a released `llm_backbone` state dict loads directly once its
`llm.` prefix is stripped. Numerics follow the release: the residual stream, RMSNorm, convolution and scan run in fp32;
the large matrices (embedding, in/x/dt/out projections) are stored in the weight dtype (fp32, bf16 or fp16; the
projections and LM head optionally int8 with group scales, `quantize.py`) and multiplied in the compute dtype (the
weight dtype, or fp32 for bf16 weights on CPUs whose bf16 arithmetic is slow); small parameters (norms, conv, A_log, D,
dt bias) are kept in fp32.

Shapes: B batch, L chunk length, d = d_model, D = d_inner, N = d_state, K = d_conv, R = dt_rank, V = vocab.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from cobra_app.model.cuda_graph import GraphedStep
from cobra_app.model.ops import MambaOps, get_ops

# Parameter-name suffixes kept in fp32 whatever the weight dtype (mamba_ssm keeps them so under autocast).
FP32_PARAM_SUFFIXES = ("A_log", "D", "conv1d.weight", "conv1d.bias", "dt_proj.bias", "norm.weight", "norm_f.weight")


@dataclass
class MambaConfig:
    """Mamba LM hyper-parameters (mamba_ssm naming)."""

    d_model: int
    n_layer: int
    vocab_size: int
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | str = "auto"
    rms_norm_eps: float = 1e-5
    pad_vocab_size_multiple: int = 8

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def dt_rank_value(self) -> int:
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return (self.vocab_size + m - 1) // m * m

    @classmethod
    def from_mamba_ssm(cls, cfg: dict) -> "MambaConfig":
        """Read mamba_ssm's `config.json` (d_model, n_layer, vocab_size, ssm_cfg, pad_vocab_size_multiple)."""
        ssm = cfg.get("ssm_cfg") or {}
        if ssm.get("layer", "Mamba1") != "Mamba1":
            raise ValueError(f"only Mamba-1 layers are supported, config has {ssm['layer']!r}")
        return cls(
            d_model=cfg["d_model"],
            n_layer=cfg["n_layer"],
            vocab_size=cfg["vocab_size"],
            pad_vocab_size_multiple=cfg.get("pad_vocab_size_multiple", 8),
            **{k: ssm[k] for k in ("d_state", "d_conv", "expand", "dt_rank") if k in ssm},
        )

    def to_mamba_ssm(self) -> dict:
        """mamba_ssm's `config.json` for this model (the inverse of `from_mamba_ssm`)."""
        ssm = {"d_state": self.d_state, "d_conv": self.d_conv, "expand": self.expand, "dt_rank": self.dt_rank}
        return {"d_model": self.d_model, "n_layer": self.n_layer, "vocab_size": self.vocab_size, "ssm_cfg": ssm,
                "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
                "pad_vocab_size_multiple": self.pad_vocab_size_multiple, "tie_embeddings": True}

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LayerState:
    """One layer's memory: `conv` [B, D, K] the last K pre-conv inputs; `ssm` [B, D, N] fp32 scan state."""

    conv: Tensor
    ssm: Tensor


@dataclass
class MambaState:
    """A whole model's recurrent state after `seqlen` tokens. Its size does not depend on `seqlen`.

    States are values: model methods never modify a state passed to them; they return a new one.
    """

    layers: list[LayerState]
    seqlen: int = 0

    @classmethod
    def zeros(cls, config: MambaConfig, batch: int = 1, device=None, dtype=torch.float32) -> "MambaState":
        """The state before the first token. `dtype` is the conv state's (the weight dtype); ssm is fp32."""
        D, N, K = config.d_inner, config.d_state, config.d_conv
        return cls(
            [
                LayerState(
                    torch.zeros(batch, D, K, device=device, dtype=dtype),
                    torch.zeros(batch, D, N, device=device, dtype=torch.float32),
                )
                for _ in range(config.n_layer)
            ]
        )

    @property
    def batch_size(self) -> int:
        return self.layers[0].ssm.shape[0]

    @property
    def device(self) -> torch.device:
        return self.layers[0].ssm.device

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers for t in (layer.conv, layer.ssm))

    def clone(self) -> "MambaState":
        return MambaState([LayerState(l.conv.clone(), l.ssm.clone()) for l in self.layers], self.seqlen)

    def to(self, device) -> "MambaState":
        return MambaState([LayerState(l.conv.to(device), l.ssm.to(device)) for l in self.layers], self.seqlen)

    @classmethod
    def stack(cls, states: list["MambaState"]) -> "MambaState":
        """Batch single or batched states along dim 0. `seqlen` is kept only when all agree (else -1)."""
        seqlens = {s.seqlen for s in states}
        layers = [
            LayerState(torch.cat([s.layers[i].conv for s in states]), torch.cat([s.layers[i].ssm for s in states]))
            for i in range(len(states[0].layers))
        ]
        return cls(layers, seqlens.pop() if len(seqlens) == 1 else -1)

    def unstack(self, seqlens: list[int] | None = None) -> list["MambaState"]:
        """Split a batched state into batch-1 states (with their own `seqlens` when given). Each owns its memory
        (a copy), so keeping one row does not keep the whole batch alive."""
        seqlens = seqlens or [self.seqlen] * self.batch_size
        return [
            MambaState([LayerState(l.conv[b : b + 1].clone(), l.ssm[b : b + 1].clone()) for l in self.layers], seqlens[b])
            for b in range(self.batch_size)
        ]

    def max_abs_diff(self, other: "MambaState") -> float:
        """Largest element-wise difference to another state (for tests and checks)."""
        return max(
            (a - b).abs().max().item()
            for x, y in zip(self.layers, other.layers)
            for a, b in ((x.conv.float(), y.conv.float()), (x.ssm, y.ssm))
        )


class RMSNorm(nn.Module):
    """y = x * rsqrt(mean(x^2) + eps) * weight, computed in fp32."""

    def __init__(self, d: int, eps: float, device=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d, device=device))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps)  # one fused op (decode speed)


class MambaMixer(nn.Module):
    """The selective-SSM mixer of one block (mamba_ssm `Mamba`, Mamba-1)."""

    def __init__(self, config: MambaConfig, device=None, dtype=None):
        super().__init__()
        d, D, N, K, R = config.d_model, config.d_inner, config.d_state, config.d_conv, config.dt_rank_value
        self.d_state, self.dt_rank = N, R
        kw = dict(device=device, dtype=dtype)
        self.in_proj = nn.Linear(d, 2 * D, bias=False, **kw)
        self.conv1d = nn.Conv1d(D, D, K, groups=D, padding=K - 1, bias=True, device=device)
        self.x_proj = nn.Linear(D, R + 2 * N, bias=False, **kw)
        self.dt_proj = nn.Linear(R, D, bias=True, **kw)
        self.A_log = nn.Parameter(torch.empty(D, N, device=device))
        self.D = nn.Parameter(torch.empty(D, device=device))
        self.out_proj = nn.Linear(D, d, bias=False, **kw)

    def A(self) -> Tensor:
        """A = -exp(A_log) [D, N] fp32. In eval mode without autograd it is kept until A_log changes (its storage or
        version: in-place updates, loading a state dict, moving devices), as decoding would otherwise recompute it for
        every token; in training it is always recomputed."""
        if self.training or (torch.is_grad_enabled() and self.A_log.requires_grad):
            return -torch.exp(self.A_log.float())
        key = (self.A_log.data_ptr(), self.A_log._version, self.A_log.device)
        if getattr(self, "_A_cache", (None,))[0] != key:
            self._A_cache = (key, -torch.exp(self.A_log.detach().float()))
        return self._A_cache[1]

    def forward(self, h: Tensor, state: LayerState, ops: MambaOps) -> tuple[Tensor, LayerState]:
        """h [B, L, d] (compute dtype) on top of `state` -> (out [B, L, d], new LayerState)."""
        xz = project(ops, h, self.in_proj)  # [B, L, 2D]
        x, z = xz.transpose(1, 2).chunk(2, dim=1)  # [B, D, L] each
        x, conv_state = ops.causal_conv1d(x, self.conv1d.weight[:, 0], self.conv1d.bias, state.conv)  # [B, D, L]
        x_dbl = project(ops, x.transpose(1, 2), self.x_proj)  # [B, L, R + 2N]
        dt, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = project(ops, dt, self.dt_proj).transpose(1, 2)  # [B, D, L]; bias + softplus happen inside the scan
        A = self.A()  # [D, N]
        y, ssm_state = ops.selective_scan(
            x, dt, A, B.transpose(1, 2), C.transpose(1, 2), self.D, z, self.dt_proj.bias, state.ssm
        )  # y [B, D, L]
        return project(ops, y.transpose(1, 2), self.out_proj), LayerState(conv_state, ssm_state)


def weight_scale(layer: nn.Linear) -> Tensor | None:
    """The group scales [N, groups] of an int8 layer (`quantize.py`), None for float weights."""
    return getattr(layer, "weight_scale", None)


def project(ops: MambaOps, x: Tensor, layer: nn.Linear) -> Tensor:
    """x @ layer.weight^T without the bias, by the ops' `linear` (int8 weights with their scales)."""
    return ops.linear(x, layer.weight, weight_scale(layer))


class Block(nn.Module):
    """Pre-norm residual block: residual += hidden; hidden = mixer(norm(residual))."""

    def __init__(self, config: MambaConfig, device=None, dtype=None):
        super().__init__()
        self.norm = RMSNorm(config.d_model, config.rms_norm_eps, device=device)
        self.mixer = MambaMixer(config, device=device, dtype=dtype)

    def forward(
        self, hidden: Tensor, residual: Tensor, state: LayerState, ops: MambaOps
    ) -> tuple[Tensor, Tensor, LayerState]:
        """hidden [B, L, d] (compute dtype), residual [B, L, d] fp32 -> (new hidden, new residual, new LayerState)."""
        residual = residual + hidden.float()
        hidden, state = self.mixer(self.norm(residual).to(hidden.dtype), state, ops)
        return hidden, residual, state

    def decode_weights(self) -> list[Tensor | None]:
        """This layer's tensors for `MambaOps.decode_layers`, in `DECODE_WEIGHTS` order (built at every token: a
        plain list, no per-layer dict)."""
        m = self.mixer
        in_proj, x_proj, dt_proj, out_proj = m.in_proj, m.x_proj, m.dt_proj, m.out_proj
        return [self.norm.weight, in_proj.weight, weight_scale(in_proj), m.conv1d.weight[:, 0], m.conv1d.bias,
                x_proj.weight, weight_scale(x_proj), dt_proj.weight, weight_scale(dt_proj), dt_proj.bias, m.A(), m.D,
                out_proj.weight, weight_scale(out_proj)]


class MixerModel(nn.Module):
    """Embedding, the stack of blocks and the final norm (mamba_ssm `MixerModel` names)."""

    def __init__(self, config: MambaConfig, device=None, dtype=None):
        super().__init__()
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model, device=device, dtype=dtype)
        self.layers = nn.ModuleList(Block(config, device, dtype) for _ in range(config.n_layer))
        self.norm_f = RMSNorm(config.d_model, config.rms_norm_eps, device=device)


class MambaLM(nn.Module):
    """Mamba language model with an explicit recurrent state.

    `forward` processes a chunk of any length on top of any state; `step` decodes one token. Both return the logits
    (fp32) and a new state that equals what reprocessing the whole history would give.
    """

    def __init__(self, config: MambaConfig, device=None, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = config
        self.backbone = MixerModel(config, device=device, dtype=dtype)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False, device=device, dtype=dtype)
        self.lm_head.weight = self.backbone.embedding.weight  # tied, as in the release
        self.ops_override: MambaOps | None = None
        self.compute_dtype = dtype  # activations and the arithmetic of the large matrices

    @property
    def dtype(self) -> torch.dtype:
        """The large float matrices' storage dtype (the embedding's)."""
        return self.backbone.embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.backbone.embedding.weight.device

    @property
    def ops(self) -> MambaOps:
        """The operator implementation in use (CUDA kernels on a GPU where available, else PyTorch)."""
        return self.ops_override or get_ops(self.device)

    def cast(self, dtype: torch.dtype, compute_dtype: torch.dtype | None = None) -> "MambaLM":
        """Store the large float matrices in `dtype` (int8 ones stay as they are), keeping `FP32_PARAM_SUFFIXES` in
        fp32, and compute in `compute_dtype` (default: `dtype`). Returns self."""
        for name, p in self.named_parameters():
            if p.is_floating_point():
                p.data = p.data.to(torch.float32 if name.endswith(FP32_PARAM_SUFFIXES) else dtype)
        self.compute_dtype = compute_dtype or dtype
        return self

    def init_weights(self, generator: torch.Generator | None = None, embedding_std: float = 0.02) -> "MambaLM":
        """Mamba's initialisation (mamba_ssm `Mamba.__init__` and `_init_weights`: embedding std 0.02; transformers'
        MambaConfig uses 0.1), in place. Returns self."""
        cfg, g = self.config, generator
        bound = 1 / math.sqrt(cfg.d_model)
        with torch.no_grad():
            self.backbone.embedding.weight.normal_(0.0, embedding_std, generator=g)
            for block in self.backbone.layers:
                m = block.mixer
                m.in_proj.weight.uniform_(-bound, bound, generator=g)
                m.x_proj.weight.uniform_(-1 / math.sqrt(cfg.d_inner), 1 / math.sqrt(cfg.d_inner), generator=g)
                dt_std = cfg.dt_rank_value**-0.5
                m.dt_proj.weight.uniform_(-dt_std, dt_std, generator=g)
                m.out_proj.weight.uniform_(-bound, bound, generator=g).div_(math.sqrt(cfg.n_layer))
        return self.init_ssm_parameters(generator)

    def init_ssm_parameters(self, generator: torch.Generator | None = None, dt_min=1e-3, dt_max=0.1) -> "MambaLM":
        """Mamba's initialisation of the small per-channel parameters (norms, conv, A_log, D, dt bias). Returns self."""
        cfg, g = self.config, generator
        conv_bound = 1 / math.sqrt(cfg.d_conv)
        with torch.no_grad():
            for block in self.backbone.layers:
                m = block.mixer
                block.norm.weight.fill_(1.0)
                m.conv1d.weight.uniform_(-conv_bound, conv_bound, generator=g)
                m.conv1d.bias.uniform_(-conv_bound, conv_bound, generator=g)
                u = torch.empty(cfg.d_inner, device=m.D.device).uniform_(generator=g)
                dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=1e-4)
                m.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus: softplus(bias) = dt
                m.A_log.copy_(torch.log(torch.arange(1, cfg.d_state + 1, device=m.D.device, dtype=torch.float32)))
                m.D.fill_(1.0)
            self.backbone.norm_f.weight.fill_(1.0)
        return self

    def embed(self, input_ids: Tensor) -> Tensor:
        """input_ids [B, L] -> token embeddings [B, L, d] (compute dtype)."""
        return self.backbone.embedding(input_ids).to(self.compute_dtype)

    def initial_state(self, batch: int = 1) -> MambaState:
        return MambaState.zeros(self.config, batch, self.device, self.compute_dtype)

    def forward(
        self,
        input_ids: Tensor | None = None,
        *,
        inputs_embeds: Tensor | None = None,
        state: MambaState | None = None,
        logits_to_keep: int = 0,
        logits_at: Tensor | None = None,
    ) -> tuple[Tensor, MambaState]:
        """Process a chunk on top of `state` (None: the start of a sequence).

        input_ids [B, L] or inputs_embeds [B, L, d], L >= 1. Returns (logits [B, L', V] fp32, new state), with
        L' = L, or the last `logits_to_keep` positions when that is > 0; with `logits_at` (bool [B, L]), the logits of
        those positions only, [n, V] in row-major order (training: the positions that have a target).
        """
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.to(self.compute_dtype)
        if x.shape[1] == 0:
            raise ValueError("a chunk must contain at least one token")
        state = state if state is not None else self.initial_state(x.shape[0])
        ops = self.ops
        stepped = self._decode_layers(ops, x[:, 0], state) if x.shape[1] == 1 and ops.decode_layers else None
        if stepped is not None:  # decoding: the layer stack in one call
            hidden, residual, new_layers = stepped
        else:
            hidden, residual = x, torch.zeros_like(x, dtype=torch.float32)  # the residual stream is fp32: [B, L, d]
            new_layers = []
            for block, layer_state in zip(self.backbone.layers, state.layers):
                hidden, residual, layer_state = block(hidden, residual, layer_state, ops)
                new_layers.append(layer_state)
        residual = residual + hidden.float()
        if logits_to_keep:
            residual = residual[:, -logits_to_keep:]
        if logits_at is not None:
            residual = residual[logits_at]  # [n, d]
        h = self.backbone.norm_f(residual).to(self.compute_dtype)
        logits = project(ops, h, self.lm_head).float()  # [B, L', V]
        return logits, MambaState(new_layers, state.seqlen + x.shape[1])

    def _decode_layers(self, ops: MambaOps, x: Tensor, state: MambaState) -> tuple[Tensor, Tensor, list] | None:
        """`ops.decode_layers` on the embedded tokens x [B, d]: (hidden [B, 1, d], residual [B, 1, d], new layer
        states), as the loop over the blocks computes them; None where the ops decline."""
        weights = [t for block in self.backbone.layers for t in block.decode_weights()]
        stepped = ops.decode_layers(x, weights, [s.conv for s in state.layers], [s.ssm for s in state.layers],
                                    self.config.rms_norm_eps)
        if stepped is None:
            return None
        hidden, residual, convs, ssms = stepped
        return hidden[:, None], residual[:, None], [LayerState(c, s) for c, s in zip(convs, ssms, strict=True)]

    def step(self, input_ids: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        """Decode one token per sequence: input_ids [B] -> (logits [B, V] fp32, new state).

        On CUDA, outside autograd, the step is replayed from a CUDA graph captured once per batch size
        (`cuda_graph.GraphedStep`, same results as the eager step); COBRA_CUDA_GRAPHS=0 turns this off."""
        if self._graphs_enabled(input_ids.device) and not torch.is_grad_enabled():
            return self._graphed_step()(input_ids, state)
        return self.eager_step(input_ids, state)

    def capture_step_graphs(self, batch_sizes: Iterable[int]) -> list[int]:
        """Capture the graphed step for each batch size now (at start-up), so that no capture runs while replies
        are generating. Returns the batch sizes captured: [] where `step` uses no graphs (CPU, COBRA_CUDA_GRAPHS=0).
        Each keeps static input and output states and a memory pool (`bench.cuda_check` reports their total)."""
        if not self._graphs_enabled(self.device):
            return []
        graphed = self._graphed_step()
        with torch.no_grad():
            for batch in batch_sizes:
                graphed.prepare(torch.zeros(batch, dtype=torch.long, device=self.device), self.initial_state(batch))
        return graphed.batch_sizes

    @staticmethod
    def _graphs_enabled(device: torch.device) -> bool:
        return device.type == "cuda" and os.environ.get("COBRA_CUDA_GRAPHS", "1") != "0"

    def eager_step(self, input_ids: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        """`step` without CUDA graphs: one forward pass over a one-token chunk."""
        logits, state = self.forward(input_ids[:, None], state=state)
        return logits[:, -1], state

    def _graphed_step(self) -> GraphedStep:
        """The graphs for the current weights and operators, recaptured when the weights have moved (graphs replay
        fixed addresses) or A_log has changed (A = -exp(A_log) is the one tensor derived from weights, computed and
        cached at capture; other in-place weight updates are read by the replay itself)."""
        a_logs = tuple((b.mixer.A_log.data_ptr(), b.mixer.A_log._version) for b in self.backbone.layers)
        key = (self.backbone.embedding.weight.data_ptr(), self.dtype, self.device, self.ops.name, a_logs)
        if getattr(self, "_graphs", (None,))[0] != key:
            self._graphs = (key, GraphedStep(self.eager_step))
        return self._graphs[1]
