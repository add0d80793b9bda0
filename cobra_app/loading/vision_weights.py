"""Frozen vision towers' weights from timm (cobra+3b's DINOv2 and SigLIP are not in its checkpoint).

Each tower gets the pretrained weights timm publishes for its `timm_model_name`, processed by timm's own
`load_pretrained` exactly as `timm.create_model(name, pretrained=True, num_classes=0, img_size=S)` does (the ViT
checkpoint filter resamples the position embeddings to S), but into a tower that was never randomly initialised.

Where the weights come from, per tower:
- default: timm's hub repo (e.g. `timm/vit_large_patch14_reg4_dinov2.lvd142m`) through huggingface_hub's cache;
  with HF_HUB_OFFLINE=1 the cache alone, without a network call;
- `vision=DIR` (`--vision-weights DIR`): `DIR/<timm_model_name>.safetensors`, the file of timm's hub repo saved
  under the tower's name (timm format, any resolution), or else DIR as a hub cache holding that repo (read offline).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import timm
from huggingface_hub import scan_cache_dir
from huggingface_hub.errors import CacheNotFound, CorruptedCacheException
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from cobra_app.loading.checkpoint import CheckpointError
from cobra_app.loading.hub import VISION, ModelUnavailableError, hub_cache_dir, hub_cache_only
from cobra_app.model.vision import VisionBackbone, ViTBranchConfig

MAX_DETAIL = 600  # characters of torch's key listing kept in an error message


def local_weights_file(vision: Path, branch: ViTBranchConfig) -> Path:
    """Where `vision=DIR` holds a tower's weights as one safetensors file."""
    return Path(vision) / f"{branch.timm_model_name}.safetensors"


def _holds_repo(cache_dir: Path, repo_id: str) -> bool:
    """Whether `cache_dir` is a hub cache with a snapshot of `repo_id`."""
    try:
        return any(repo.repo_id == repo_id and repo.revisions for repo in scan_cache_dir(cache_dir).repos)
    except (CacheNotFound, CorruptedCacheException):  # not a hub cache at all
        return False


def _unavailable(branch: ViTBranchConfig, repo_id: str, looked: list[str],
                 exc: Exception | None) -> ModelUnavailableError:
    detail = f" ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'})" if exc else ""
    return ModelUnavailableError(
        f"no weights for the vision tower '{branch.name}' (timm {branch.timm_model_name}, hub repo {repo_id}); "
        f"looked in {' and '.join(looked)}{detail}. "
        + VISION.hint(f"a directory holding {branch.timm_model_name}.safetensors (or a hub cache with {repo_id})")
    )


def load_timm_tower(vit: VisionTransformer, branch: ViTBranchConfig, vision: Path | None = None) -> None:
    """Materialise `vit` (built on the meta device, in the dtype it will run in) with timm's pretrained weights for
    `branch`: from the hub (cache) by default, from `vision` when given (see the module docstring)."""
    if branch.timm_model_name is None:
        raise CheckpointError(f"the checkpoint holds no weights for the vision tower '{branch.name}', and it has no "
                              "timm pretrained weights (a config for models trained from scratch)")
    cfg = timm.models.get_pretrained_cfg(branch.timm_model_name).to_dict()
    repo_id = cfg["hf_hub_id"]
    cache_dir, looked = None, [f"the hub cache {hub_cache_dir()}"]
    if vision is not None:
        local = local_weights_file(vision, branch)
        looked = [str(local), f"the hub cache {vision}"]
        if local.is_file():
            cfg["state_dict"] = load_file(local)
        elif _holds_repo(Path(vision), repo_id):
            cache_dir = Path(vision)
        else:
            raise _unavailable(branch, repo_id, looked, None)
    vit.to_empty(device="cpu")  # uninitialised memory: timm's strict load below overwrites every tensor
    try:
        with hub_cache_only() if cache_dir is not None else contextlib.nullcontext():
            timm.models.load_pretrained(vit, pretrained_cfg=cfg, num_classes=0, in_chans=3,
                                        filter_fn=checkpoint_filter_fn, strict=True, cache_dir=cache_dir)
    except OSError as exc:  # huggingface_hub: offline and not cached, no network, missing repo or file
        raise _unavailable(branch, repo_id, looked, exc) from exc
    except RuntimeError as exc:  # load_state_dict: keys or shapes differ
        detail = " ".join(str(exc).split())  # torch's message names every missing, unexpected or mis-shaped key
        raise CheckpointError(f"timm weights for the vision tower '{branch.name}' ({branch.timm_model_name}) do not "
                              f"fit it: {detail[:MAX_DETAIL]}") from exc


def load_timm_towers(backbone: VisionBackbone, vision: Path | None = None) -> None:
    """Every tower of `backbone` from timm's pretrained weights."""
    for branch in backbone.config.branches:
        load_timm_tower(backbone.featurizer_for(branch.name), branch, vision)
