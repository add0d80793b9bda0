"""Safe weight files: torch pickles only with `weights_only=True`, strict key/shape checks with named culprits, and
weights put straight into a model built on the meta device (no random init, no second copy)."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from torch import Tensor, nn

# How many offending keys an error message lists before summarising.
MAX_KEYS_SHOWN = 12


class CheckpointError(ValueError):
    """A weight file that cannot be loaded into the model; the message names the offending keys."""


def load_torch_checkpoint(path: Path) -> dict:
    """torch.load with `weights_only=True`: tensors and plain containers only, never code. Memory-mapped (the file's
    pages are read as each tensor is copied into the model) unless the file predates torch's zip format."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refusing to load {path}: it holds Python objects other than tensors and containers "
            f"(loaded with weights_only=True). Detail: {str(exc).splitlines()[0]}"
        ) from exc


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_KEYS_SHOWN])
    return shown + (f" ... (+{len(keys) - MAX_KEYS_SHOWN} more)" if len(keys) > MAX_KEYS_SHOWN else "")


def tied_parameters(module: nn.Module) -> dict[str, str]:
    """{alias: name} for every parameter that is the same object as an earlier one (Mamba's lm_head and embedding)."""
    first: dict[int, str] = {}
    aliases = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def _untie(state_dict: dict[str, Tensor], aliases: dict[str, str], what: str) -> dict[str, Tensor]:
    """The state dict under each tied parameter's first name only. An alias holding other values than its parameter
    is an error (a checkpoint of an untied model), not something to pick a winner from."""
    state_dict = dict(state_dict)
    for alias, name in aliases.items():
        if alias not in state_dict:
            continue
        value = state_dict.pop(alias)
        if name not in state_dict:
            state_dict[name] = value
        elif not torch.equal(value, state_dict[name]):
            raise CheckpointError(f"{what}: {alias} differs from {name}, but the model ties them (one tensor)")
    return state_dict


def _check_keys(expected: dict[str, Tensor], state_dict: dict[str, Tensor], what: str) -> None:
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


def load_state_dict_checked(module: nn.Module, state_dict: dict[str, Tensor], what: str, take: bool = False) -> None:
    """Put `state_dict` into `module` (built on the meta device or not), each tensor in the dtype of the module's
    tensor it replaces, failing with a message that names every missing, unexpected or mis-shaped key. Tied parameters
    stay one object whether the state dict holds them once or twice. `what` names the part for the message (e.g.
    "projector"). `take`: the tensors are the caller's to give away (e.g. just read from a safetensors file), and those
    already in the right dtype and layout go in as they are; otherwise every tensor is copied into memory of its own
    (e.g. from a memory-mapped checkpoint)."""
    aliases = tied_parameters(module)
    state_dict = _untie(state_dict, aliases, what)
    expected = {k: v for k, v in module.state_dict(keep_vars=True).items() if k not in aliases}
    _check_keys(expected, state_dict, what)
    owned = {}
    for key in list(state_dict):  # popped as converted: a source in memory is freed tensor by tensor
        owned[key] = state_dict.pop(key).to(dtype=expected[key].dtype, memory_format=torch.contiguous_format,
                                            copy=not take)
    module.load_state_dict({**owned, **{a: owned[name] for a, name in aliases.items()}}, strict=True, assign=True)
    for alias, name in aliases.items():  # `assign` wraps each name in its own Parameter: make the tie one object again
        owner, _, attr = alias.rpartition(".")
        setattr(module.get_submodule(owner), attr, module.get_parameter(name))


def strip_prefix(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Remove `prefix` from every key; a key without it is a clear error."""
    wrong = [k for k in state_dict if not k.startswith(prefix)]
    if wrong:
        raise CheckpointError(f"expected every key to start with '{prefix}'; these do not: {_listing(sorted(wrong))}")
    return {k[len(prefix) :]: v for k, v in state_dict.items()}
