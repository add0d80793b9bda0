"""Released Cobra checkpoints: the hub release (`cobra+3b`) and run directories in the release layout.

Layout (reference section 2): `<run>/config.json` = {"model": {...}} and `<run>/checkpoints/latest-checkpoint.pt` =
{"model": {"projector": ..., "llm_backbone": ...}} (plus "vision_backbone" when a run trained its vision tower).
The rest lives elsewhere, and each part can be pointed at local files (offline machines, fine-tuned LLMs):
- the LLM's mamba_ssm `config.json` and tokenizer: the LLM backbone's hub repo (`registry.LLM_BACKBONES`), or
  `llm=` a local directory holding them (or another hub repo);
- the frozen vision towers' weights: timm's hub, or `vision=` local files (`vision_weights`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from cobra_app.loading.checkpoint import CheckpointError, load_state_dict_checked, load_torch_checkpoint, strip_prefix
from cobra_app.loading.hub import LLM, MODEL, ModelUnavailableError, hub_file
from cobra_app.loading.registry import MODELS, llm_backbone
from cobra_app.loading.vision_weights import load_timm_towers
from cobra_app.model.cobra import CobraConfig, CobraVLM
from cobra_app.model.mamba import MambaConfig
from cobra_app.model.vision import VISION_BACKBONES

CHECKPOINT = Path("checkpoints") / "latest-checkpoint.pt"
TOKENIZER = "tokenizer.json"  # the fast tokenizer every Mamba LLM here ships; its folder is read by AutoTokenizer
HUB_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
LLM_DIR_HINT = LLM.hint("a local mamba_ssm-format LLM directory (config.json + tokenizer.json)")

log = logging.getLogger(__name__)


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


def llm_files(llm_backbone_id: str, llm: str | Path | None = None) -> tuple[Path, Path]:
    """(mamba_ssm config.json, tokenizer folder) of a run's LLM: from the backbone's hub repos by default; from `llm`
    when given, a local directory holding both or a hub repo id `owner/name`."""
    if llm is None:
        spec = llm_backbone(llm_backbone_id)
        return hub_file(spec.hf_repo, "config.json", LLM_DIR_HINT), hub_file(spec.tokenizer_repo, TOKENIZER,
                                                                              LLM_DIR_HINT).parent
    path = Path(llm)
    if path.is_dir():
        for name in ("config.json", TOKENIZER):
            if not (path / name).is_file():
                raise ModelUnavailableError(f"the LLM directory {path} has no {name} (looked for {path / name}); it "
                                            "needs the LLM's mamba_ssm config.json and its tokenizer files. "
                                            + LLM_DIR_HINT)
        return path / "config.json", path
    if HUB_REPO_ID.fullmatch(str(llm)):
        try:
            return hub_file(str(llm), "config.json", LLM_DIR_HINT), hub_file(str(llm), TOKENIZER, LLM_DIR_HINT).parent
        except ModelUnavailableError as exc:
            raise ModelUnavailableError(f"no LLM directory {path.resolve()}, so {str(llm)!r} was taken for a hub "
                                        f"repo: {exc}") from exc
    raise ModelUnavailableError(f"the LLM directory {path} does not exist (looked for {path.resolve()}), and "
                                f"{str(llm)!r} is not a hub repo id (owner/name). " + LLM_DIR_HINT)


def is_run_config(path: Path) -> bool:
    """Whether `path` is a release-layout config.json ({"model": {...}})."""
    return path.is_file() and isinstance(json.loads(path.read_text()).get("model"), dict)


def read_mamba_config(path: Path) -> MambaConfig:
    cfg = json.loads(path.read_text())
    if not {"d_model", "n_layer", "vocab_size"} <= set(cfg):
        raise ValueError(f"{path} is not a mamba_ssm config.json (it needs d_model, n_layer and vocab_size; "
                         f"it has {sorted(cfg)[:8]})")
    return MambaConfig.from_mamba_ssm(cfg)


class ReleaseRun:
    """A run directory in the release layout, with where its LLM files and frozen vision weights come from.
    Built from the small files (configs, tokenizer), so a missing one fails before the checkpoint is read."""

    def __init__(self, run_dir: Path, llm: str | Path | None = None, vision: str | Path | None = None):
        self.run_dir = Path(run_dir)
        for path in (self.run_dir / "config.json", self.run_dir / CHECKPOINT):
            if not path.is_file():
                raise ModelUnavailableError(
                    f"{path.name} not found: looked for {path} (a run directory in the release layout holds "
                    f"config.json and {CHECKPOINT.as_posix()}). " + MODEL.hint("a run or model directory"))
        if not is_run_config(self.run_dir / "config.json"):
            raise ValueError(f"{self.run_dir / 'config.json'} is not a release config.json (no 'model' entry)")
        model_cfg = json.loads((self.run_dir / "config.json").read_text())["model"]
        llm_config, self.tokenizer_dir = llm_files(model_cfg["llm_backbone_id"], llm)
        self.config = release_config(model_cfg, read_mamba_config(llm_config))
        self.vision = None if vision is None else Path(vision)

    def load_weights(self, vlm: CobraVLM) -> None:
        """Fill `vlm` (built on the meta device from `self.config`): projector and LLM from the checkpoint, vision
        towers from it when the run trained them, else from timm."""
        path = self.run_dir / CHECKPOINT
        weights = load_torch_checkpoint(path)
        parts = weights.get("model") if isinstance(weights, dict) else None
        if not isinstance(parts, dict) or not {"projector", "llm_backbone"} <= set(parts):
            raise CheckpointError(f"{path}: expected {{'model': {{'projector', 'llm_backbone', ...}}}}")
        if "vision_backbone" in parts:
            if self.vision is not None:
                log.warning("%s holds the run's own vision weights: the vision weights in %s are not used", path,
                            self.vision)
            load_state_dict_checked(vlm.vision_backbone, parts["vision_backbone"], "vision_backbone")
        else:
            load_timm_towers(vlm.vision_backbone, self.vision)
        load_state_dict_checked(vlm.projector, parts["projector"], "projector")
        load_state_dict_checked(vlm.llm, strip_prefix(parts["llm_backbone"], "llm."), "llm_backbone")

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        return AutoTokenizer.from_pretrained(self.tokenizer_dir)


def download_release(model_id: str) -> Path:
    """Fetch a released model's config and checkpoint into the hub cache; returns its run directory there."""
    spec = MODELS[model_id]
    hint = MODEL.hint(f"a local copy of {spec.hf_repo}/{spec.subfolder} (a run directory)")
    config_path = hub_file(spec.hf_repo, f"{spec.subfolder}/config.json", hint)
    hub_file(spec.hf_repo, f"{spec.subfolder}/{CHECKPOINT.as_posix()}", hint)
    return config_path.parent
