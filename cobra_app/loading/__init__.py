"""Reading Cobra models from their files: `read_model(source, llm=, vision=)` -> (CobraVLM, tokenizer).

`source` is a registry id (`cobra+3b`), a hub path, a local run directory in the release layout, or a self-contained
model directory. `llm` and `vision` point a release-layout run's LLM files and frozen vision weights at local files
(`release.py`, `vision_weights.py`). The network is built on the meta device in the dtypes it will run in (storage and
arithmetic, `precision.py`), and each weight is put in once: no random initialisation, no fp32 copy of a bf16 model.

This package returns the network and the tokenizer; `cobra_app.load` (pipeline.py) wraps them in the one object
people use, `Cobra`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import torch
from transformers import PreTrainedTokenizerBase

from cobra_app.loading.checkpoint import CheckpointError
from cobra_app.loading.hub import MODEL, ModelUnavailableError, hub_file
from cobra_app.loading.meta import check_loaded, empty_model, num_parameters
from cobra_app.loading.model_dir import ModelDir, is_model_dir, save_model_dir
from cobra_app.loading.precision import apply_precision, resolve_precision
from cobra_app.loading.random_init import build_random
from cobra_app.loading.registry import MODELS
from cobra_app.loading.release import CHECKPOINT, ReleaseRun, download_release, is_run_config
from cobra_app.model.cobra import CobraConfig, CobraVLM

__all__ = [
    "CheckpointError", "ModelUnavailableError", "apply_precision", "build_random", "read_model", "resolve_device",
    "resolve_precision", "save_model_dir",
]

log = logging.getLogger(__name__)


class ModelFiles(Protocol):
    """A model's files, located: its config (read), its tokenizer and weights (read on demand)."""

    config: CobraConfig

    def load_weights(self, vlm: CobraVLM) -> None: ...

    def load_tokenizer(self) -> PreTrainedTokenizerBase: ...


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device)


def _hub_path_files(source: str, llm, vision) -> ModelFiles:
    """`owner/repo[/subfolder]` on the hub, in the release layout or as a self-contained model directory."""
    owner, repo, *sub = source.split("/")
    repo_id, prefix = f"{owner}/{repo}", "/".join(sub) + "/" if sub else ""
    hint = MODEL.hint("a local run or model directory")
    config_path = hub_file(repo_id, prefix + "config.json", hint)
    if is_run_config(config_path):
        hub_file(repo_id, prefix + CHECKPOINT.as_posix(), hint)
        return ReleaseRun(config_path.parent, llm, vision)
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        hub_file(repo_id, prefix + name, hint)
    return _self_contained(config_path.parent, llm, vision)


def _self_contained(path: Path, llm, vision) -> ModelDir:
    if llm is not None or vision is not None:
        raise ValueError(f"{path} is a self-contained model directory (its LLM files and vision weights are inside): "
                         "llm / vision (--llm, --vision-weights, COBRA_LLM, COBRA_VISION) apply to release-layout "
                         "runs only; drop them")
    return ModelDir(path)


def locate(source: str | Path, llm: str | Path | None = None, vision: str | Path | None = None) -> ModelFiles:
    """The files of `source` (see the module docstring); configs and tokenizer files are fetched or checked here."""
    path = Path(source)
    if str(source) in MODELS:
        return ReleaseRun(download_release(str(source)), llm, vision)
    if path.is_dir():
        if is_model_dir(path):
            return _self_contained(path, llm, vision)
        if (path / CHECKPOINT).is_file() or is_run_config(path / "config.json"):
            return ReleaseRun(path, llm, vision)
        raise ValueError(f"{path} is neither a Cobra Chat model directory nor a run directory in the release layout "
                         f"(config.json with a 'model' entry, {CHECKPOINT.as_posix()})")
    if str(source).count("/") >= 1 and not path.exists():
        return _hub_path_files(str(source), llm, vision)
    raise ValueError(f"unknown model {source!r}: use a registry id ({', '.join(MODELS)}), a hub path or a directory")


def read_model(
    source: str | Path,
    *,
    llm: str | Path | None = None,
    vision: str | Path | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
) -> tuple[CobraVLM, PreTrainedTokenizerBase]:
    """(network in eval mode without gradients, on `device`, stored and computed as `dtype` asks
    (`resolve_precision`; the network's `precision` says how and why); its tokenizer) for `source`."""
    files = locate(source, llm, vision)
    device = resolve_device(device)
    vlm = empty_model(files.config)
    precision = resolve_precision(dtype, device, num_parameters(vlm))
    vlm.cast(precision.float_weights, precision.compute)
    files.load_weights(vlm)
    check_loaded(vlm, str(source))
    log.info("%s: %s (%s)", source, precision.label, precision.reason)
    vlm = apply_precision(vlm, precision)  # int8: quantised from the weights as loaded
    return vlm.to(device).eval().requires_grad_(False), files.load_tokenizer()
