"""Spec: the four projector archs with the release's parameter names, exact-erf GELU, and LDP token pooling."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cobra_app.model.projector import PROJECTORS, build_projector, num_output_tokens

V, D = 24, 16  # tiny vision / llm dims

EXPECTED_SHAPES = {
    "linear": {"projector.weight": (D, V), "projector.bias": (D,)},
    "gelu-mlp": {
        "projector.0.weight": (D, V),
        "projector.0.bias": (D,),
        "projector.2.weight": (D, D),
        "projector.2.bias": (D,),
    },
    "fused-gelu-mlp": {
        "projector.0.weight": (4 * V, V),
        "projector.0.bias": (4 * V,),
        "projector.2.weight": (D, 4 * V),
        "projector.2.bias": (D,),
        "projector.4.weight": (D, D),
        "projector.4.bias": (D,),
    },
    "fused-ldpnet": {
        "projector.0.weight": (4 * V, V),
        "projector.0.bias": (4 * V,),
        "projector.2.weight": (D, 4 * V),
        "projector.2.bias": (D,),
        "projector.4.peg.0.weight": (D, 1, 3, 3),
        "projector.4.peg.0.bias": (D,),
    },
}


def shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def gelu_erf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def reference_forward(arch: str, sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Hand-written forward from the state dict alone."""
    if arch == "linear":
        return F.linear(x, sd["projector.weight"], sd["projector.bias"])
    h = gelu_erf(F.linear(x, sd["projector.0.weight"], sd["projector.0.bias"]))
    h = F.linear(h, sd["projector.2.weight"], sd["projector.2.bias"])
    if arch == "gelu-mlp":
        return h
    if arch == "fused-gelu-mlp":
        return F.linear(gelu_erf(h), sd["projector.4.weight"], sd["projector.4.bias"])
    b, n, c = h.shape
    side = math.isqrt(n)
    grid = F.adaptive_avg_pool2d(h.transpose(1, 2).reshape(b, c, side, side), 14)
    grid = grid + F.conv2d(grid, sd["projector.4.peg.0.weight"], sd["projector.4.peg.0.bias"], padding=1, groups=c)
    return grid.flatten(2).transpose(1, 2)


def test_registry_holds_the_four_release_archs():
    assert set(PROJECTORS) == set(EXPECTED_SHAPES)


@pytest.mark.parametrize("arch", sorted(EXPECTED_SHAPES))
@pytest.mark.parametrize("prefix", ["", "no-align+", "align+"])
def test_state_dict_names_and_shapes(arch, prefix):
    assert shapes(build_projector(prefix + arch, V, D)) == EXPECTED_SHAPES[arch]


@pytest.mark.parametrize("arch", sorted(EXPECTED_SHAPES))
def test_forward_matches_hand_written_reference(arch):
    torch.manual_seed(0)
    proj = build_projector(arch, V, D)
    x = torch.randn(2, 729, V) * 3  # large inputs: tanh-approximate GELU would be visibly off
    out = proj(x)
    expected_tokens = 196 if arch == "fused-ldpnet" else 729
    assert out.shape == (2, expected_tokens, D)
    assert proj.num_output_tokens(729) == num_output_tokens("no-align+" + arch, 729) == expected_tokens
    torch.testing.assert_close(out, reference_forward(arch, proj.state_dict(), x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["gelu-mlp", "fused-gelu-mlp", "fused-ldpnet"])
def test_gelu_is_exact_erf_at_odd_indices(arch):
    layers = build_projector(arch, V, D).projector
    gelus = {i: m for i, m in enumerate(layers) if isinstance(m, nn.GELU)}
    assert set(gelus) == ({1} if arch != "fused-gelu-mlp" else {1, 3})
    assert all(m.approximate == "none" for m in gelus.values())
    x = torch.linspace(-4, 4, 101)
    assert not torch.allclose(F.gelu(x, approximate="tanh"), gelu_erf(x), atol=1e-5)  # the check can tell them apart
    torch.testing.assert_close(gelus[1](x), gelu_erf(x))


def test_ldpnet_pools_any_square_grid_to_14x14_and_rejects_non_square():
    proj = build_projector("fused-ldpnet", V, D)
    assert proj(torch.randn(1, 16, V)).shape == (1, 196, D)  # a tiny 4x4 grid is upsampled to 14x14
    assert proj.num_output_tokens(16) == 196
    with pytest.raises(ValueError, match="square"):
        proj(torch.randn(1, 15, V))


def test_ldpnet_keeps_row_major_patch_order():
    """With a 28x28 grid pooled 2x2, output token (r, c) averages input patches (2r..2r+1, 2c..2c+1)."""
    torch.manual_seed(0)
    proj = build_projector("fused-ldpnet", V, D)
    x = torch.randn(1, 28 * 28, V)
    h = proj.projector[2](proj.projector[1](proj.projector[0](x)))
    pooled = proj.projector[3](h)
    grid = h[0].reshape(28, 28, D)
    torch.testing.assert_close(pooled[0, 14 * 3 + 5], grid[6:8, 10:12].mean(dim=(0, 1)))


def test_cobra_3b_projector_shapes_on_meta():
    with torch.device("meta"):
        proj = build_projector("no-align+fused-gelu-mlp", 2176, 2560)
    assert shapes(proj) == {
        "projector.0.weight": (8704, 2176),
        "projector.0.bias": (8704,),
        "projector.2.weight": (2560, 8704),
        "projector.2.bias": (2560,),
        "projector.4.weight": (2560, 2560),
        "projector.4.bias": (2560,),
    }
    assert num_output_tokens("no-align+fused-ldpnet", 729) == 196


def test_unknown_arch_is_rejected():
    with pytest.raises(ValueError, match="fused-gelu-mlp"):
        build_projector("no-align+qformer", V, D)
