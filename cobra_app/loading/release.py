"""Released Cobra checkpoints: the hub release (`cobra+3b`) and local run directories in the release layout.

Layout (reference section 2): `<run>/config.json` = {"model": {...}} and `<run>/checkpoints/latest-checkpoint.pt` =
{"model": {"projector": ..., "llm_backbone": ...}} (plus "vision_backbone" when a run trained its vision tower).
The LLM config and tokenizer come from the LLM backbone's hub repo; frozen vision weights from timm's hub.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from cobra_app.loading.checkpoint import CheckpointError, load_state_dict_checked, load_torch_checkpoint, strip_prefix
from cobra_app.loading.hub import hub_file
from cobra_app.loading.registry import MODELS, llm_backbone
from cobra_app.model.cobra import CobraConfig, CobraVLM
from cobra_app.model.mamba import MambaConfig
from cobra_app.model.vision import VISION_BACKBONES

CHECKPOINT = Path("checkpoints") / "latest-checkpoint.pt"


def release_config(model_cfg: dict, llm: MambaConfig) -> CobraConfig:
    """The release's `config.json["model"]` plus the LLM's mamba_ssm config -> CobraConfig."""
    try:
        vision = VISION_BACKBONES[model_cfg["vision_backbone_id"]]
    except KeyError:
        raise ValueError(
            f"unknown vision_backbone_id {model_cfg.get('vision_backbone_id')!r}; known: {sorted(VISION_BACKBONES)}"
        ) from None
    config = CobraConfig(
        model_id=model_cfg["model_id"],
        arch_specifier=model_cfg["arch_specifier"],
        vision=vision,
        llm=llm,
        llm_backbone_id=model_cfg["llm_backbone_id"],
        llm_max_length=model_cfg.get("llm_max_length", 2048),
        prompt_format=llm_backbone(model_cfg["llm_backbone_id"]).prompt_format,
    )
    return config.with_resize_strategy(model_cfg.get("image_resize_strategy", vision.image_resize_strategy))


def load_run_dir(run_dir: Path) -> tuple[CobraVLM, PreTrainedTokenizerBase]:
    """Load a run directory in the release layout (fp32, CPU). LLM config/tokenizer/vision weights via the hub."""
    run_dir = Path(run_dir)
    model_cfg = json.loads((run_dir / "config.json").read_text())["model"]
    spec = llm_backbone(model_cfg["llm_backbone_id"])
    llm = MambaConfig.from_mamba_ssm(json.loads(hub_file(spec.hf_repo, "config.json").read_text()))
    config = release_config(model_cfg, llm)
    weights = load_torch_checkpoint(run_dir / CHECKPOINT)
    parts = weights.get("model") if isinstance(weights, dict) else None
    if not isinstance(parts, dict) or not {"projector", "llm_backbone"} <= set(parts):
        raise CheckpointError(f"{run_dir / CHECKPOINT}: expected {{'model': {{'projector', 'llm_backbone', ...}}}}")
    vlm = CobraVLM(config, pretrained_vision="vision_backbone" not in parts)
    if "vision_backbone" in parts:
        load_state_dict_checked(vlm.vision_backbone, parts["vision_backbone"], "vision_backbone")
    load_state_dict_checked(vlm.projector, parts["projector"], "projector")
    load_state_dict_checked(vlm.llm, strip_prefix(parts["llm_backbone"], "llm."), "llm_backbone")
    tokenizer = AutoTokenizer.from_pretrained(hub_file(spec.tokenizer_repo, "tokenizer.json").parent)
    return vlm, tokenizer


def download_release(model_id: str) -> Path:
    """Fetch a released model's config and checkpoint into the hub cache; returns its run directory there."""
    spec = MODELS[model_id]
    config_path = hub_file(spec.hf_repo, f"{spec.subfolder}/config.json")
    hub_file(spec.hf_repo, f"{spec.subfolder}/{CHECKPOINT.as_posix()}")
    return config_path.parent
