"""bf16-stored weights under fp32 arithmetic (`cobra_app.model.stored_linear`, `CobraVLM.cast(bf16, fp32)`): the
same numbers as an fp32 model holding the bf16-rounded weights, the same state dict names, half the bytes."""

import torch
from torch import nn

from cobra_app.model.stored_linear import StoredLinear, cast_module
from tests.helpers import make_tiny_vlm, sample_image


def rounded_copy(module: nn.Module) -> nn.Module:
    """An fp32 module whose Linear weights hold the bf16-rounded values."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                layer.weight.copy_(layer.weight.bfloat16().float())
    return module


def test_linears_keep_bf16_weights_and_compute_in_fp32():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(24, 40), nn.GELU(), nn.Sequential(nn.Linear(40, 8, bias=False)), nn.LayerNorm(8))
    reference = rounded_copy(nn.Sequential(*[m for m in mlp]).requires_grad_(False))
    names = list(mlp.state_dict())
    expected = reference(torch.randn(5, 24, generator=torch.Generator().manual_seed(1)))
    cast_module(mlp, torch.bfloat16, torch.float32)
    assert list(mlp.state_dict()) == names
    assert type(mlp[0]) is StoredLinear and type(mlp[2][0]) is StoredLinear
    assert mlp[0].weight.dtype == torch.bfloat16 and mlp[0].bias.dtype == torch.float32
    assert mlp[3].weight.dtype == torch.float32
    out = mlp(torch.randn(5, 24, generator=torch.Generator().manual_seed(1)))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_same_dtypes_are_a_plain_cast():
    mlp = nn.Sequential(nn.Linear(4, 4))
    cast_module(mlp, torch.bfloat16, torch.bfloat16)
    assert type(mlp[0]) is nn.Linear and mlp[0].weight.dtype == torch.bfloat16


def test_vlm_with_bf16_weights_and_fp32_arithmetic_matches_its_rounded_fp32_twin():
    vlm, _ = make_tiny_vlm()
    twin, _ = make_tiny_vlm()
    for part in (twin.vision_backbone, twin.projector):
        rounded_copy(part)
    with torch.no_grad():
        for name, p in twin.llm.named_parameters():
            if p.dim() == 2 and "conv1d" not in name:
                p.copy_(p.bfloat16().float())
    vlm.cast(torch.bfloat16, torch.float32)
    assert vlm.dtype == torch.bfloat16 and vlm.compute_dtype == torch.float32
    stored = sum(p.numel() * p.element_size() for p in vlm.parameters())
    assert stored < 0.6 * sum(p.numel() * p.element_size() for p in twin.parameters())
    pixels = {k: v[None] for k, v in vlm.image_transform(sample_image()).items()}
    ids = torch.tensor([[5, 17, 42, 7]])
    with torch.no_grad():
        embeds = vlm.encode_images(pixels)
        assert embeds.dtype == torch.float32
        torch.testing.assert_close(embeds, twin.encode_images(pixels), rtol=1e-5, atol=1e-5)
        logits, state = vlm.prefill(ids, embeds, logits_to_keep=4)
        expected, _ = twin.prefill(ids, twin.encode_images(pixels), logits_to_keep=4)
    assert state.layers[0].conv.dtype == torch.float32
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
