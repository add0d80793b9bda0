"""Cobra models built without weights, on the meta device: no memory and no random initialisation (building the
cobra+3b towers and LM with random values took most of a CPU load before). Loaders cast the empty model to the dtype it
will run in, then put each tensor in once (`checkpoint.load_state_dict_checked`, `vision_weights.load_timm_towers`)."""

from __future__ import annotations

from itertools import chain

import torch
from torch import nn

from cobra_app.loading.checkpoint import CheckpointError
from cobra_app.model.cobra import CobraConfig, CobraVLM


def empty_model(config: CobraConfig) -> CobraVLM:
    """A CobraVLM whose tensors are all on the meta device (shapes and dtypes only)."""
    with torch.device("meta"):
        return CobraVLM(config)


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_loaded(module: nn.Module, what: str) -> None:
    """Fail, naming them, when parameters or buffers were left without weights (still on the meta device)."""
    empty = [name for name, t in chain(module.named_parameters(), module.named_buffers()) if t.is_meta]
    if empty:
        raise CheckpointError(f"{what}: no weights were loaded for {', '.join(empty[:12])}"
                              + (f" ... (+{len(empty) - 12} more)" if len(empty) > 12 else ""))
