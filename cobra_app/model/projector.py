"""Projector: vision patch features [B, P, V] -> LLM input embeddings [B, P', D] (reference section 4).

    linear          Linear(V, D)
    gelu-mlp        Linear(V, D), GELU, Linear(D, D)
    fused-gelu-mlp  Linear(V, 4V), GELU, Linear(4V, D), GELU, Linear(D, D)              (Cobra-3B)
    fused-ldpnet    Linear(V, 4V), GELU, Linear(4V, D), pool grid -> 14x14, x + dwconv3x3(x)   (P' = 196)

GELU is the exact erf form. Layers live in the attribute `projector` with the release's structure, so the
state_dict keys are the release's: `projector.weight` / `projector.bias` for `linear` (a bare Linear there),
`projector.{0,2,4}.*` for the MLPs, `projector.{0,2}.*` + `projector.4.peg.0.*` for fused-ldpnet.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

LDP_GRID = 14  # LDPv2 (MobileVLM v2) pools the patch grid to 14 x 14 tokens


def _to_grid(x: torch.Tensor) -> torch.Tensor:
    """[B, h*h, C] -> [B, C, h, h]."""
    b, n, c = x.shape
    h = math.isqrt(n)
    if h * h != n:
        raise ValueError(f"expected a square patch grid, got {n} tokens")
    return x.transpose(1, 2).reshape(b, c, h, h)


def _from_grid(x: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, h*w, C]."""
    return x.flatten(2).transpose(1, 2)


class TokenDownLayer(nn.Module):
    """[B, h*h, C] -> [B, grid*grid, C]: adaptive average pooling of the square patch grid."""

    def __init__(self, grid: int) -> None:
        super().__init__()
        self.dwn = nn.Sequential(nn.AdaptiveAvgPool2d((grid, grid)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _from_grid(self.dwn(_to_grid(x)))


class PosInjectLayer(nn.Module):
    """[B, h*h, C] -> [B, h*h, C]: x + depthwise Conv2d(C, C, 3, padding 1) over the grid (positional injection)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.peg = nn.Sequential(nn.Conv2d(dim, dim, 3, stride=1, padding=1, bias=True, groups=dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = _to_grid(x)
        return _from_grid(self.peg(grid) + grid)


@dataclass(frozen=True)
class ProjectorArch:
    """A projector architecture: its layers given (vision_dim V, llm_dim D), and its token pooling if any."""

    layers: Callable[[int, int], nn.Module]
    output_grid: int | None = None  # None = one output token per patch

    def num_output_tokens(self, num_patches: int) -> int:
        return num_patches if self.output_grid is None else self.output_grid**2


def _fused_head(v: int, d: int) -> list[nn.Module]:
    """Linear(V, 4V), GELU, Linear(4V, D): the start of both fused archs."""
    return [nn.Linear(v, 4 * v), nn.GELU(), nn.Linear(4 * v, d)]


PROJECTORS: dict[str, ProjectorArch] = {
    "linear": ProjectorArch(lambda v, d: nn.Linear(v, d)),
    "gelu-mlp": ProjectorArch(lambda v, d: nn.Sequential(nn.Linear(v, d), nn.GELU(), nn.Linear(d, d))),
    "fused-gelu-mlp": ProjectorArch(lambda v, d: nn.Sequential(*_fused_head(v, d), nn.GELU(), nn.Linear(d, d))),
    "fused-ldpnet": ProjectorArch(
        lambda v, d: nn.Sequential(*_fused_head(v, d), TokenDownLayer(LDP_GRID), PosInjectLayer(d)),
        output_grid=LDP_GRID,
    ),
}


def projector_arch(arch_specifier: str) -> str:
    """Strip training-recipe prefixes: "no-align+fused-gelu-mlp" -> "fused-gelu-mlp"."""
    arch = arch_specifier.rsplit("+", 1)[-1]
    if arch not in PROJECTORS:
        raise ValueError(f"unknown projector arch {arch_specifier!r}; known: {sorted(PROJECTORS)}")
    return arch


def num_output_tokens(arch_specifier: str, num_patches: int) -> int:
    """Image tokens handed to the LLM for `num_patches` vision patches (729 -> 196 for fused-ldpnet)."""
    return PROJECTORS[projector_arch(arch_specifier)].num_output_tokens(num_patches)


class Projector(nn.Module):
    """[B, P, V] -> [B, P', D]; the layers are `self.projector` (release parameter names)."""

    def __init__(self, arch_specifier: str, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.arch = projector_arch(arch_specifier)
        self.projector = PROJECTORS[self.arch].layers(vision_dim, llm_dim)

    def num_output_tokens(self, num_patches: int) -> int:
        return PROJECTORS[self.arch].num_output_tokens(num_patches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(x)


def build_projector(arch_specifier: str, vision_dim: int, llm_dim: int) -> Projector:
    return Projector(arch_specifier, vision_dim, llm_dim)
