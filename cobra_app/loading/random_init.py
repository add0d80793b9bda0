"""Random-weight models at any size in seconds: built on the meta device, materialised once in the target dtype."""

from __future__ import annotations

import math

import torch
from torch import nn

from cobra_app.loading.meta import empty_model
from cobra_app.model.cobra import CobraConfig, CobraVLM
from cobra_app.model.mamba import MambaLM

# Random values drawn once and tiled (at random offsets) into every matrix: drawing 3.5 B fresh values costs ~20 s.
POOL_SIZE = 1 << 22
DRAWN_STD = 0.02  # every matrix's spread as drawn (the embedding keeps it: mamba_ssm's initializer_range)


def fill_random(module: nn.Module, generator: torch.Generator, dtype: torch.dtype, std: float = 0.02) -> None:
    """Overwrite every parameter of a materialised `module` with N(0, std) values rounded to `dtype`, tiled from one
    random pool."""
    device = generator.device
    pool = torch.randn(2 * POOL_SIZE, generator=generator, device=device).mul_(std).to(dtype)
    with torch.no_grad():
        for p in module.parameters():
            flat = p.view(-1)
            for start in range(0, flat.numel(), POOL_SIZE):
                n = min(POOL_SIZE, flat.numel() - start)
                offset = int(torch.randint(0, POOL_SIZE, (1,), generator=generator, device=device))
                flat[start : start + n].copy_(pool[offset : offset + n])


def rescale_to_mamba_init(lm: MambaLM, drawn_std: float) -> None:
    """Scale each mixer's projections, drawn N(0, drawn_std), to the spread of mamba_ssm's initialisation: nn.Linear's
    default (uniform, std 1 / sqrt(3 fan_in)) for in_proj and x_proj, that over sqrt(n_layer) for out_proj
    (`rescale_prenorm_residual`), uniform +-dt_rank^-0.5 for dt_proj. The values stay normal (tails heavier than the
    uniform's: a harder case for int8). With N(0, 0.02) everywhere out_proj was 20x Mamba's, and cobra+3b's 64 layers
    amplified rounding like no trained model: bf16 arithmetic alone moved the last logits 3.1% of their norm (0.8% at
    Mamba's spread; `bench.int8_accuracy`)."""
    n_layer = len(lm.backbone.layers)
    with torch.no_grad():
        for block in lm.backbone.layers:
            m = block.mixer
            for layer, extra in ((m.in_proj, 1.0), (m.x_proj, 1.0), (m.out_proj, 1 / math.sqrt(n_layer))):
                layer.weight.mul_(extra / math.sqrt(3 * layer.weight.shape[1]) / drawn_std)
            m.dt_proj.weight.mul_(m.dt_proj.weight.shape[1] ** -0.5 / math.sqrt(3) / drawn_std)


def build_random(config: CobraConfig, dtype: torch.dtype = torch.bfloat16, seed: int = 0, device="cpu") -> CobraVLM:
    """A CobraVLM with N(0, 0.02) matrices (tiled from one random pool), the language model's projections and small
    SSM parameters at the spread of Mamba's initialisation, never holding an fp32 copy (3.5 B parameters in bf16:
    7 GB, a few seconds on 2 cores). For benchmarks: the values are random, not trained."""
    vlm = empty_model(config).cast(dtype)
    vlm.to_empty(device=device)
    vlm.llm.lm_head.weight = vlm.llm.backbone.embedding.weight  # keep the tie explicit after materialisation
    g = torch.Generator(device=device).manual_seed(seed)
    fill_random(vlm, g, dtype, std=DRAWN_STD)
    rescale_to_mamba_init(vlm.llm, DRAWN_STD)
    vlm.llm.init_ssm_parameters(g)
    return vlm
