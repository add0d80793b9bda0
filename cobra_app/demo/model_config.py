"""The demo Cobra's configuration: the release's architecture in miniature, sized to train on a 2-core CPU.

    64x64 image -> [DINOv2-style ViT ‖ SigLIP-style ViT], conv stems (penultimate-block patch features, concatenated)
                -> fused-gelu-mlp projector -> small Mamba (Zephyr prompt format, demo BPE tokenizer)

Sizes were chosen by profiling training steps on the target machine and by short learning-speed probes
(see docs/DEMO_MODEL.md): convolutional stems learn the shapes many times faster than linear patch embeddings, and a
wider recurrent state (d_state 32) learns to recall objects from the image sooner.
"""

from __future__ import annotations

from cobra_app.model.cobra import CobraConfig
from cobra_app.model.mamba import MambaConfig
from cobra_app.model.vision import VISION_BACKBONES, VisionBackboneConfig

DEMO_MODEL_ID = "cobra-demo-synthetic"
DEMO_VISION_ID = "small-dinosiglip-64px"  # 64 px, stride 16 -> 4 x 4 = 16 patches; widths 96 + 128 = 224, 4 blocks each
DEMO_ARCH = "no-align+fused-gelu-mlp"
DEMO_D_MODEL = 256
DEMO_N_LAYER = 4
DEMO_D_STATE = 32  # the release's Mamba has 16; twice the state recalls objects from the image much sooner in training
DEMO_LLM_MAX_LENGTH = 1024


def demo_config(
    vocab_size: int,
    *,
    d_model: int = DEMO_D_MODEL,
    n_layer: int = DEMO_N_LAYER,
    d_state: int = DEMO_D_STATE,
    vision: str | VisionBackboneConfig = DEMO_VISION_ID,
    model_id: str = DEMO_MODEL_ID,
) -> CobraConfig:
    """The demo model's CobraConfig for a tokenizer of `vocab_size` tokens (1280 for `build_demo_tokenizer()`).
    Scenes are rendered at the vision tower's input size (`config.vision.image_size`, 64)."""
    vision_cfg = VISION_BACKBONES[vision] if isinstance(vision, str) else vision
    return CobraConfig(
        model_id=model_id,
        arch_specifier=DEMO_ARCH,
        vision=vision_cfg,
        llm=MambaConfig(d_model=d_model, n_layer=n_layer, vocab_size=vocab_size, d_state=d_state),
        llm_backbone_id="mamba-demo-zephyr",  # trained here from scratch; it only shares the Zephyr prompt format
        llm_max_length=DEMO_LLM_MAX_LENGTH,
        prompt_format="zephyr",
    )


def tiny_config(vocab_size: int) -> CobraConfig:
    """A seconds-to-train configuration for smoke tests (32 px, 16 patches, 2-layer Mamba of width 32)."""
    return demo_config(vocab_size, d_model=32, n_layer=2, d_state=16, vision="tiny-dinosiglip-32px",
                       model_id="cobra-demo-tiny")
