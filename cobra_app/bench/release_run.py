"""A release-layout Cobra run with random weights, and the hub cache its other parts come from: what a machine that
once fetched `cobra+3b` holds, built locally at any size and never downloaded. For the load-time benchmark
(`bench/load_time.py`, at cobra+3b sizes) and the offline-loading tests (tiny sizes).

    run_dir/config.json, run_dir/checkpoints/latest-checkpoint.pt      (projector + llm_backbone, `write_run_dir`)
    cache/models--<llm repo>/...: config.json (mamba_ssm), tokenizer     (`write_llm_repo`)
    cache/models--timm--<tower>/...: model.safetensors at timm's size  (`write_timm_weights`)

The cache has huggingface_hub's layout (refs/main -> a commit, snapshots/<commit>/<file> -> blobs/<id>), so
`hf_hub_download` and timm read it with HF_HUB_OFFLINE=1 and HF_HUB_CACHE pointing at it.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import timm
import torch
from huggingface_hub.file_download import repo_folder_name
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer
from transformers import PreTrainedTokenizerBase

from cobra_app.loading.random_init import fill_random
from cobra_app.loading.release import CHECKPOINT
from cobra_app.model.cobra import CobraVLM
from cobra_app.model.mamba import MambaConfig
from cobra_app.model.vision import ViTBranchConfig

COMMIT = "c0b7a" + "0" * 35  # the one revision of every repo in the cache


def cache_file(cache_dir: Path, repo_id: str, filename: str) -> Path:
    """The path to write `filename` of hub repo `repo_id` to in a hub cache: a blob, linked from the snapshot."""
    repo = Path(cache_dir) / repo_folder_name(repo_id=repo_id, repo_type="model")
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    blob = repo / "blobs" / hashlib.sha256(f"{repo_id}/{filename}".encode()).hexdigest()
    link = repo / "snapshots" / COMMIT / filename
    blob.parent.mkdir(parents=True, exist_ok=True)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(Path("../" * (len(Path(filename).parts) + 1)) / "blobs" / blob.name)
    return blob


def write_llm_repo(cache_dir: Path, repo_id: str, llm: MambaConfig, tokenizer: PreTrainedTokenizerBase) -> None:
    """An LLM backbone's hub repo as the loader reads it: mamba_ssm config.json and the tokenizer files."""
    cache_file(cache_dir, repo_id, "config.json").write_text(json.dumps(llm.to_mamba_ssm()))
    with tempfile.TemporaryDirectory() as saved:
        tokenizer.save_pretrained(saved)
        for path in Path(saved).iterdir():
            cache_file(cache_dir, repo_id, path.name).write_bytes(path.read_bytes())


def timm_weights(branch: ViTBranchConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random weights in timm's format for `branch.timm_model_name`, at the size timm publishes them (e.g. DINOv2's
    518 px position embeddings, which loading resamples to the tower's size)."""
    with torch.device("meta"):
        vit: VisionTransformer = timm.create_model(branch.timm_model_name, pretrained=False)
    vit.to(dtype).to_empty(device="cpu")
    fill_random(vit, torch.Generator().manual_seed(seed), dtype)
    return vit.state_dict()


def timm_repo(branch: ViTBranchConfig) -> str:
    """The hub repo timm fetches a tower's pretrained weights from."""
    return timm.models.get_pretrained_cfg(branch.timm_model_name).hf_hub_id


def write_timm_weights(cache_dir: Path, branch: ViTBranchConfig, seed: int = 0) -> Path:
    """Random timm-format weights for a tower, where timm looks for them in the hub cache (its repo's
    model.safetensors)."""
    path = cache_file(cache_dir, timm_repo(branch), "model.safetensors")
    save_file(timm_weights(branch, seed), path, metadata={"format": "pt"})
    return path


def release_checkpoint(vlm: CobraVLM, with_vision: bool = False) -> dict:
    """The release's pickle layout: {"model": {"projector": ..., "llm_backbone": {"llm.<key>": ...}}} (plus
    "vision_backbone" for a run that trained its towers; cobra+3b's are frozen and left out)."""
    parts = {
        "projector": vlm.projector.state_dict(),
        "llm_backbone": {f"llm.{k}": v for k, v in vlm.llm.state_dict().items()},
    }
    if with_vision:
        parts["vision_backbone"] = vlm.vision_backbone.state_dict()
    return {"model": parts}


def write_run_dir(run_dir: Path, vlm: CobraVLM, llm_backbone_id: str, checkpoint: dict | None = None) -> Path:
    """A run directory in the release layout for `vlm` (its checkpoint: `checkpoint`, default without vision)."""
    cfg = vlm.config
    (Path(run_dir) / CHECKPOINT.parent).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "config.json").write_text(json.dumps({"model": {
        "model_id": cfg.model_id, "arch_specifier": cfg.arch_specifier, "vision_backbone_id": cfg.vision_backbone_id,
        "llm_backbone_id": llm_backbone_id, "image_resize_strategy": cfg.image_resize_strategy,
        "llm_max_length": cfg.llm_max_length,
    }}))
    torch.save(checkpoint or release_checkpoint(vlm), Path(run_dir) / CHECKPOINT)
    return Path(run_dir)
