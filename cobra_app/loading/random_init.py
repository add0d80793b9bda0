"""Random-weight models at any size in seconds: built on the meta device, materialised once in the target dtype."""

from __future__ import annotations

import torch
from torch import nn

from cobra_app.loading.meta import empty_model
from cobra_app.model.cobra import CobraConfig, CobraVLM

# Random values drawn once and tiled (at random offsets) into every matrix: drawing 3.5 B fresh values costs ~20 s.
POOL_SIZE = 1 << 22


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


def build_random(config: CobraConfig, dtype: torch.dtype = torch.bfloat16, seed: int = 0, device="cpu") -> CobraVLM:
    """A CobraVLM with N(0, 0.02) matrices (tiled from one random pool) and Mamba's initialisation of the small SSM
    parameters, never holding an fp32 copy (3.5 B parameters in bf16: 7 GB, a few seconds on 2 cores). For
    benchmarks: the values are random, not trained."""
    vlm = empty_model(config).cast(dtype)
    vlm.to_empty(device=device)
    vlm.llm.lm_head.weight = vlm.llm.backbone.embedding.weight  # keep the tie explicit after materialisation
    g = torch.Generator(device=device).manual_seed(seed)
    fill_random(vlm, g, dtype)
    vlm.llm.init_ssm_parameters(g)
    return vlm
