"""The dtype option (`cobra_app.loading.precision`): how a model is stored and computed, decided from what the CPU
does fast, and said with its reason; int8 loading end to end."""

import pytest
import torch

from cobra_app.loading import read_model, save_model_dir
from cobra_app.loading import precision as pr
from cobra_app.model.ops import cpu_capability
from cobra_app.model.ops.cpu_capability import Bf16Verdict
from tests.helpers import make_tiny_vlm, sample_image

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
LARGE = pr.CPU_BF16_MIN_PARAMS


@pytest.fixture
def bf16(monkeypatch):
    """Set this CPU's bf16 verdict: bf16(fast=True|False)."""
    def set_verdict(fast: bool) -> None:
        monkeypatch.setattr(pr, "bf16_verdict", lambda: Bf16Verdict(fast, "fast here" if fast else "slow here"))
    return set_verdict


@pytest.mark.parametrize(("fast", "compute"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_on_cpu_stores_large_models_in_bf16_and_computes_as_the_cpu_is_fast(bf16, fast, compute):
    bf16(fast)
    chosen = pr.resolve_precision("auto", CPU, LARGE)
    assert (chosen.weights, chosen.compute) == (torch.bfloat16, compute)
    assert ("fast here" if fast else "slow here") in chosen.reason and "auto" in chosen.reason
    assert chosen.label == ("bfloat16" if fast else "bfloat16 weights, float32 compute")


def test_auto_keeps_small_models_in_fp32_and_uses_bf16_on_gpus(bf16):
    bf16(False)
    assert pr.resolve_precision("auto", CPU, LARGE - 1).weights == torch.float32
    gpu = pr.resolve_precision("auto", CUDA, 10)
    assert (gpu.weights, gpu.compute) == (torch.bfloat16, torch.bfloat16)


@pytest.mark.parametrize(("fast", "compute"), [(True, torch.bfloat16), (False, torch.float32)])
def test_bf16_and_int8_weights_on_cpu_compute_as_the_cpu_is_fast(bf16, fast, compute):
    bf16(fast)
    for asked in ("bfloat16", "bf16", torch.bfloat16):
        assert pr.resolve_precision(asked, CPU, 1).compute == compute
    int8 = pr.resolve_precision("int8", CPU, 1)
    assert (int8.weights, int8.float_weights, int8.compute) == (torch.int8, torch.bfloat16, compute)
    assert int8.label == f"int8 weights, {str(compute).removeprefix('torch.')} compute"


def test_other_dtypes_are_taken_as_asked_and_bad_ones_explained(bf16):
    bf16(False)
    for asked, dtype in (("float32", torch.float32), ("fp16", torch.float16), (torch.float32, torch.float32)):
        chosen = pr.resolve_precision(asked, CPU, LARGE)
        assert chosen.weights == chosen.compute == dtype
    assert pr.resolve_precision("bfloat16", CUDA, 1).compute == torch.bfloat16
    with pytest.raises(ValueError, match="CPU option"):
        pr.resolve_precision("int8", CUDA, 1)
    with pytest.raises(ValueError, match="auto, float32, bfloat16, float16, int8"):
        pr.resolve_precision("int4", CPU, 1)


def test_an_avx2_only_machine_is_simulated_by_the_isa_cap(monkeypatch):
    """COBRA_CPU_ISA=avx2: the hook tests use to be an AVX2-only machine; bf16 weights then compute in fp32."""
    monkeypatch.setenv(cpu_capability.ISA_ENV, "avx2")
    monkeypatch.setattr(cpu_capability, "host_isa", lambda: "avx512_bf16")
    cpu_capability.bf16_verdict.cache_clear()
    try:
        chosen = pr.resolve_precision("auto", CPU, LARGE)
    finally:
        cpu_capability.bf16_verdict.cache_clear()
    assert (chosen.weights, chosen.compute) == (torch.bfloat16, torch.float32)
    assert "COBRA_CPU_ISA=avx2" in chosen.reason


@pytest.mark.parametrize("fast", [True, False])
def test_int8_loads_quantised_and_answers_like_the_fp32_model(bf16, tmp_path, fast):
    bf16(fast)
    vlm, tokenizer = make_tiny_vlm()
    model_dir = save_model_dir(vlm, tokenizer, tmp_path / "m")
    reference, _ = read_model(model_dir, device="cpu", dtype="float32")
    loaded, _ = read_model(model_dir, device="cpu", dtype="int8")
    assert loaded.precision.weights == torch.int8 and "int8" in loaded.precision.reason
    mixer, llm = loaded.llm.backbone.layers[0].mixer, loaded.llm
    assert mixer.in_proj.weight.dtype == mixer.x_proj.weight.dtype == llm.lm_head.weight.dtype == torch.int8
    assert llm.backbone.embedding.weight.dtype == torch.bfloat16 and mixer.conv1d.weight.dtype == torch.float32
    pixels = {k: v[None] for k, v in loaded.image_transform(sample_image()).items()}
    ids = torch.tensor([[5, 17, 42, 7]])
    with torch.no_grad():
        logits, _ = loaded.prefill(ids, loaded.encode_images(pixels), logits_to_keep=4)
        expected, _ = reference.prefill(ids, reference.encode_images(pixels), logits_to_keep=4)
    assert logits.dtype == torch.float32
    # int8 rows (<= 1/254 of each row's peak per weight), bf16 elsewhere and, where fast, bf16 arithmetic
    assert ((logits - expected).norm() / expected.norm()).item() < (0.03 if fast else 0.02)
