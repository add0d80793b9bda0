"""Random-weight models at any size in seconds: built on the meta device, materialised once in the target dtype."""

from __future__ import annotations

import torch

from cobra_app.model.cobra import CobraConfig, CobraVLM

# Random values drawn once and tiled (at random offsets) into every matrix: drawing 3.5 B fresh values costs ~20 s.
POOL_SIZE = 1 << 22


def build_random(config: CobraConfig, dtype: torch.dtype = torch.bfloat16, seed: int = 0, device="cpu") -> CobraVLM:
    """A CobraVLM with N(0, 0.02) matrices (tiled from one random pool) and Mamba's initialisation of the small SSM
    parameters, never holding an fp32 copy (3.5 B parameters in bf16: 7 GB, a few seconds on 2 cores). For
    benchmarks: the values are random, not trained."""
    with torch.device("meta"):
        vlm = CobraVLM(config).cast(dtype)
    vlm.to_empty(device=device)
    vlm.llm.lm_head.weight = vlm.llm.backbone.embedding.weight  # keep the tie explicit after materialisation
    g = torch.Generator(device=device).manual_seed(seed)
    pool = torch.randn(2 * POOL_SIZE, generator=g, device=device).mul_(0.02).to(dtype)
    with torch.no_grad():
        for p in vlm.parameters():
            flat = p.view(-1)
            for start in range(0, flat.numel(), POOL_SIZE):
                n = min(POOL_SIZE, flat.numel() - start)
                offset = int(torch.randint(0, POOL_SIZE, (1,), generator=g, device=device))
                flat[start : start + n].copy_(pool[offset : offset + n])
    vlm.llm.init_ssm_parameters(g)
    return vlm
