"""Where each model and LLM backbone lives: registries instead of if-chains.

`MODELS` maps a released Cobra id to its hub location and to its known configuration (used to validate the downloaded
config and to build random-weight models at the real sizes without any download). `LLM_BACKBONES` maps the release's
`llm_backbone_id` to the hub repo of its mamba_ssm config and tokenizer, and to its prompt format.
"""

from __future__ import annotations

from dataclasses import dataclass

from cobra_app.model.cobra import CobraConfig
from cobra_app.model.mamba import MambaConfig
from cobra_app.model.vision import VISION_BACKBONES


@dataclass(frozen=True)
class LLMBackboneSpec:
    hf_repo: str  # holds config.json (mamba_ssm format)
    tokenizer_repo: str
    prompt_format: str  # prompting registry id


LLM_BACKBONES: dict[str, LLMBackboneSpec] = {
    "mamba-2.8b-zephyr": LLMBackboneSpec("xiuyul/mamba-2.8b-zephyr", "xiuyul/mamba-2.8b-zephyr", "zephyr"),
    "mamba-2.8b-slimpj": LLMBackboneSpec("state-spaces/mamba-2.8b-slimpj", "EleutherAI/gpt-neox-20b", "mamba"),
    "mamba-2.8b": LLMBackboneSpec("state-spaces/mamba-2.8b", "EleutherAI/gpt-neox-20b", "mamba"),
}


@dataclass(frozen=True)
class ReleaseSpec:
    hf_repo: str  # e.g. han1997/cobra
    subfolder: str  # e.g. cobra+3b: holds config.json and checkpoints/latest-checkpoint.pt
    config: CobraConfig  # the release's configuration, known in advance


MODELS: dict[str, ReleaseSpec] = {
    "cobra+3b": ReleaseSpec(
        "han1997/cobra",
        "cobra+3b",
        CobraConfig(
            model_id="cobra+3b",
            arch_specifier="no-align+fused-gelu-mlp",
            vision=VISION_BACKBONES["dinosiglip-vit-so-384px"],
            llm=MambaConfig(d_model=2560, n_layer=64, vocab_size=50277),
            llm_backbone_id="mamba-2.8b-zephyr",
            llm_max_length=2048,
            prompt_format="zephyr",
        ),
    ),
}


def llm_backbone(llm_backbone_id: str) -> LLMBackboneSpec:
    try:
        return LLM_BACKBONES[llm_backbone_id]
    except KeyError:
        raise ValueError(f"unknown llm_backbone_id {llm_backbone_id!r}; known: {sorted(LLM_BACKBONES)}") from None
