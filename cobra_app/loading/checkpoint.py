"""Safe weight files: torch pickles only with `weights_only=True`, strict key/shape checks with named culprits."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

# How many offending keys an error message lists before summarising.
MAX_KEYS_SHOWN = 12


class CheckpointError(ValueError):
    """A weight file that cannot be loaded into the model; the message names the offending keys."""


def load_torch_checkpoint(path: Path) -> dict:
    """torch.load with `weights_only=True`: tensors and plain containers only, never code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refusing to load {path}: it holds Python objects other than tensors and containers "
            f"(loaded with weights_only=True). Detail: {str(exc).splitlines()[0]}"
        ) from exc


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_KEYS_SHOWN])
    return shown + (f" ... (+{len(keys) - MAX_KEYS_SHOWN} more)" if len(keys) > MAX_KEYS_SHOWN else "")


def load_state_dict_checked(module: nn.Module, state_dict: dict[str, Tensor], what: str) -> None:
    """Copy `state_dict` into `module` (casting to each parameter's dtype), failing with a message that names every
    missing, unexpected or mis-shaped key. `what` names the part for the message (e.g. "projector")."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = sorted(
        f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(expected[k].shape)})"
        for k in set(expected) & set(state_dict)
        if state_dict[k].shape != expected[k].shape
    )
    problems = [
        f"{label}: {_listing(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", misshaped))
        if keys
    ]
    if problems:
        raise CheckpointError(f"{what} weights do not fit the model; " + "; ".join(problems))
    module.load_state_dict(state_dict, strict=True)


def strip_prefix(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Remove `prefix` from every key; a key without it is a clear error."""
    wrong = [k for k in state_dict if not k.startswith(prefix)]
    if wrong:
        raise CheckpointError(f"expected every key to start with '{prefix}'; these do not: {_listing(sorted(wrong))}")
    return {k[len(prefix) :]: v for k, v in state_dict.items()}
