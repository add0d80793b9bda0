"""Spec: a fresh demo model has the release's architecture within the size budget, and embeddings large enough to
learn recall."""

from cobra_app.demo.model_config import demo_config, tiny_config
from cobra_app.demo.training.model_init import EMBEDDING_INIT_STD, build_model


def test_demo_config_fits_the_size_budget(tokenizer):
    config = demo_config(len(tokenizer))
    vlm = build_model(config, seed=0)
    params = sum(p.numel() for p in vlm.parameters() if p is not vlm.llm.lm_head.weight)
    assert params * 4 <= 25e6  # fp32 safetensors
    assert config.prompt_format == "zephyr" and config.arch_specifier.endswith("fused-gelu-mlp")
    assert len(config.vision.branches) == 2  # DINOv2-style and SigLIP-style ViTs, fused


def test_fresh_models_start_with_embeddings_large_enough_to_recall(tokenizer):
    """std 0.1, not mamba_ssm's 0.02: with 0.02 a small Mamba does not learn recall within the CPU budget
    (EMBEDDING_INIT_STD); the rest of Mamba's init is unchanged."""
    vlm = build_model(tiny_config(len(tokenizer)), seed=0)
    std = vlm.llm.backbone.embedding.weight.std().item()
    assert EMBEDDING_INIT_STD == 0.1 and abs(std - 0.1) < 0.01
    assert all((b.mixer.D == 1).all() for b in vlm.llm.backbone.layers)
