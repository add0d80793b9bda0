"""Loading Cobra models: `load(source)` accepts a registry id (`cobra+3b`), a hub repo path, a local run directory
in the release layout, or a self-contained model directory. Every part ends on one device in one dtype."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from cobra_app.loading.checkpoint import CheckpointError
from cobra_app.loading.hub import ModelUnavailableError, hub_file
from cobra_app.loading.model_dir import is_model_dir, load_model_dir, save_model_dir
from cobra_app.loading.random_init import build_random
from cobra_app.loading.registry import MODELS
from cobra_app.loading.release import CHECKPOINT, download_release, load_run_dir
from cobra_app.model.cobra import CobraVLM

__all__ = [
    "CheckpointError", "LoadedModel", "ModelUnavailableError", "build_random", "load", "load_parts",
    "resolve_device", "resolve_dtype", "save_model_dir",
]

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
# Models above this size default to bf16 on CPU (half the memory traffic; bf16 matmul is fast on current CPUs).
CPU_BF16_MIN_PARAMS = 500_000_000


@dataclass
class LoadedModel:
    """A ready model: the network, its tokenizer, and where it came from."""

    vlm: CobraVLM
    tokenizer: PreTrainedTokenizerBase
    source: str

    @property
    def config(self):
        return self.vlm.config


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device, num_params: int) -> torch.dtype:
    """"auto": bf16 on CUDA; on CPU bf16 for large models, fp32 for small ones (exactness costs nothing there)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)} or 'auto'")
        return DTYPES[dtype]
    if device.type == "cuda" or num_params >= CPU_BF16_MIN_PARAMS:
        return torch.bfloat16
    return torch.float32


def _load_hub_path(source: str) -> tuple[CobraVLM, PreTrainedTokenizerBase]:
    """`owner/repo[/subfolder]` on the hub, in the release layout or as a self-contained model directory."""
    owner, repo, *sub = source.split("/")
    repo_id, prefix = f"{owner}/{repo}", "/".join(sub) + "/" if sub else ""
    config_path = hub_file(repo_id, prefix + "config.json")
    if "model" in json.loads(config_path.read_text()):
        hub_file(repo_id, prefix + CHECKPOINT.as_posix())
        return load_run_dir(config_path.parent)
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        hub_file(repo_id, prefix + name)
    return load_model_dir(config_path.parent)


def load_parts(source: str | Path) -> tuple[CobraVLM, PreTrainedTokenizerBase]:
    """Resolve `source` to (fp32 CPU model, tokenizer). See `load`."""
    path = Path(source)
    if str(source) in MODELS:
        return load_run_dir(download_release(str(source)))
    if path.is_dir():
        if is_model_dir(path):
            return load_model_dir(path)
        if (path / CHECKPOINT).is_file():
            return load_run_dir(path)
        raise ValueError(f"{path} is neither a Cobra Chat model directory nor a run directory in the release layout")
    if str(source).count("/") >= 1 and not path.exists():
        return _load_hub_path(str(source))
    raise ValueError(f"unknown model {source!r}: use a registry id ({', '.join(MODELS)}), a hub path or a directory")


def load(source: str | Path = "cobra+3b", device: str | torch.device = "auto", dtype: str | torch.dtype = "auto"):
    """Load a Cobra model for inference (eval mode, no gradients) on `device` in `dtype`."""
    vlm, tokenizer = load_parts(source)
    device = resolve_device(device)
    num_params = sum(p.numel() for p in vlm.parameters())
    vlm = vlm.cast(resolve_dtype(dtype, device, num_params)).to(device).eval().requires_grad_(False)
    return LoadedModel(vlm, tokenizer, str(source))
