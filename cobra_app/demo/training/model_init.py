"""A fresh demo model, initialised from a seed."""

from __future__ import annotations

import torch

from cobra_app.model.cobra import CobraConfig, CobraVLM

EMBEDDING_INIT_STD = 0.1  # transformers' Mamba default; at mamba_ssm's 0.02 recall is not learned in budget (docs)


def build_model(config: CobraConfig, seed: int) -> CobraVLM:
    """Fresh model: timm's ViT init, default projector init, Mamba's init with EMBEDDING_INIT_STD (all from `seed`)."""
    torch.manual_seed(seed)
    vlm = CobraVLM(config)
    vlm.llm.init_weights(torch.Generator().manual_seed(seed), embedding_std=EMBEDDING_INIT_STD)
    return vlm
