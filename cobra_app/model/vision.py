"""Vision tower: one or more timm ViTs whose second-to-last-block patch features are concatenated.

    pixel_values {"dino": [B,3,S,S], "siglip": [B,3,S,S]}
      -> each ViT up to block len(blocks)-2, patch tokens only, no final norm   [B, P, C_i]
      -> concat on channels                                                     [B, P, sum C_i]

For `dinosiglip-vit-so-384px`: P = 27 x 27 = 729, C = 1024 + 1152 = 2176 (reference section 3).
Hyper-parameters are explicit: the towers built from them have exactly the structure timm registers under each
branch's `timm_model_name` (tests/model/test_vision.py), so timm's pretrained weights load into them
(`cobra_app.loading.vision_weights`), and models without hub weights (tiny, demo) build the same way.
"""

from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch
from timm.layers import HybridEmbed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from cobra_app.model.transforms import ImageTransform, build_transform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ViTBranchConfig:
    """One timm VisionTransformer; the fields are the kwargs under which timm registers the hub model."""

    name: str  # key of this branch in pixel_values / image_transform outputs ("dino", "siglip")
    timm_model_name: str | None  # timm id whose pretrained weights fit this tower; None for offline-only configs
    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    class_token: bool = True
    reg_tokens: int = 0
    no_embed_class: bool = False  # position embeddings only on patch tokens (DINOv2)
    init_values: float | None = None  # layer scale (DINOv2: 1e-5)
    act_layer: str | None = None  # None = timm default nn.GELU (exact erf), as in both hub models
    global_pool: str = "token"  # "map" = SigLIP attention-pool head (unused for features; kept for weight loading)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # () = the usual linear patch embedding (both hub models); else the output channels of stride-2 3x3 convolutions
    # that replace it (`ConvStem`, total stride = patch_size): offline configs trained from scratch only
    conv_stem: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "conv_stem", tuple(self.conv_stem))
        if self.conv_stem and 2 ** len(self.conv_stem) != self.patch_size:
            raise ValueError(f"{self.name}: a conv stem of {len(self.conv_stem)} stride-2 layers has stride "
                             f"{2 ** len(self.conv_stem)}, not patch_size {self.patch_size}")

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    def timm_kwargs(self) -> dict[str, Any]:
        """kwargs for `VisionTransformer(**kwargs)` (feature extractor: no classifier head)."""
        return {
            "img_size": self.img_size,
            "patch_size": 1 if self.conv_stem else self.patch_size,  # a conv stem's output is already the patch grid
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "class_token": self.class_token,
            "reg_tokens": self.reg_tokens,
            "no_embed_class": self.no_embed_class,
            "init_values": self.init_values,
            "act_layer": self.act_layer,
            "global_pool": self.global_pool,
            "num_classes": 0,
            **({"embed_layer": partial(HybridEmbed, backbone=ConvStem(self.conv_stem))} if self.conv_stem else {}),
        }


class ConvStem(nn.Sequential):
    """[B, 3, S, S] -> [B, channels[-1], S / 2^n, S / 2^n]: n stride-2 3x3 convolutions (BatchNorm + GELU between).

    A convolutional patch embedding ("Early convolutions help transformers see better", Xiao et al. 2021): ViTs trained
    from scratch on little compute learn shapes many times faster with it than with a linear patch projection. Wrapped
    by timm's `HybridEmbed`, which adds the 1x1 projection to the ViT width."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip((3, *channels), channels)):
            layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1))
            if i < len(channels) - 1:
                layers += [nn.BatchNorm2d(c_out), nn.GELU()]
        super().__init__(*layers)
        self.num_features = channels[-1]  # read by HybridEmbed


@dataclass(frozen=True)
class VisionBackboneConfig:
    """A vision tower: its branches (concatenated in this order) and the image resize strategy."""

    backbone_id: str
    branches: tuple[ViTBranchConfig, ...]
    image_resize_strategy: str = "resize-naive"

    def __post_init__(self) -> None:
        object.__setattr__(self, "branches", tuple(self.branches))
        names = [b.name for b in self.branches]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"{self.backbone_id}: need >= 1 branch with unique names, got {names}")
        if len({(b.img_size, b.num_patches) for b in self.branches}) != 1:
            raise ValueError(f"{self.backbone_id}: branches must share image size and patch grid")
        if any(b.depth < 2 for b in self.branches):
            raise ValueError(f"{self.backbone_id}: features come from the second-to-last block, need depth >= 2")

    @property
    def image_size(self) -> int:
        return self.branches[0].img_size

    @property
    def num_patches(self) -> int:
        return self.branches[0].num_patches

    @property
    def patch_grid(self) -> int:
        """Patches per side (the patch tokens are row-major over a patch_grid x patch_grid grid)."""
        return self.branches[0].img_size // self.branches[0].patch_size

    @property
    def embed_dim(self) -> int:
        return sum(b.embed_dim for b in self.branches)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VisionBackboneConfig":
        branches = tuple(
            ViTBranchConfig(**{**b, "mean": tuple(b["mean"]), "std": tuple(b["std"])}) for b in d["branches"]
        )
        return cls(**{**d, "branches": branches})


def _dino(**overrides: Any) -> ViTBranchConfig:
    """DINOv2 family: class token + 4 registers, position embeddings on patches only, layer scale."""
    base = {
        "name": "dino",
        "class_token": True,
        "reg_tokens": 4,
        "no_embed_class": True,
        "init_values": 1e-5,
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
    }
    return ViTBranchConfig(**{**base, **overrides})


def _siglip(**overrides: Any) -> ViTBranchConfig:
    """SigLIP family: no class token, attention-pool head, mlp_ratio 3.7362 (SO400M), mean/std 0.5."""
    base = {
        "name": "siglip",
        "class_token": False,
        "global_pool": "map",
        "mlp_ratio": 3.7362,
        "mean": SIGLIP_MEAN,
        "std": SIGLIP_STD,
    }
    return ViTBranchConfig(**{**base, **overrides})


DINOV2_L_384 = _dino(
    timm_model_name="vit_large_patch14_reg4_dinov2.lvd142m",
    img_size=384,
    patch_size=14,
    embed_dim=1024,
    depth=24,
    num_heads=16,
)
SIGLIP_SO400M_384 = _siglip(
    timm_model_name="vit_so400m_patch14_siglip_384", img_size=384, patch_size=14, embed_dim=1152, depth=27, num_heads=16
)

VISION_BACKBONES: dict[str, VisionBackboneConfig] = {
    cfg.backbone_id: cfg
    for cfg in [
        VisionBackboneConfig("dinosiglip-vit-so-384px", (DINOV2_L_384, SIGLIP_SO400M_384)),
        VisionBackboneConfig("siglip-vit-so400m-384px", (SIGLIP_SO400M_384,)),
        # offline configs (random init, no hub): same structural flags as each family, tiny widths; the demo model's
        # (64 px) trains from scratch, hence conv stems and a neutral layer-scale init (1.0, not DINOv2's 1e-5)
        VisionBackboneConfig(
            "tiny-dinosiglip-32px",
            (
                _dino(timm_model_name=None, img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2),
                _siglip(timm_model_name=None, img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=2),
            ),
        ),
        VisionBackboneConfig(
            "small-dinosiglip-64px",
            (
                _dino(timm_model_name=None, img_size=64, patch_size=16, embed_dim=96, depth=4, num_heads=3,
                      init_values=1.0, conv_stem=(32, 64, 64, 64)),
                _siglip(timm_model_name=None, img_size=64, patch_size=16, embed_dim=128, depth=4, num_heads=4,
                        conv_stem=(32, 64, 64, 64)),
            ),
        ),
    ]
}


def create_vit(branch: ViTBranchConfig) -> VisionTransformer:
    """The ViT of `branch` from its explicit kwargs, with timm's random init (no weights are read here: the loaders in
    `cobra_app.loading` build it on the meta device and fill in checkpoint or timm hub weights)."""
    return VisionTransformer(**branch.timm_kwargs())


def penultimate_patch_features(vit: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """[B, 3, S, S] -> [B, P, C]: output of block len(blocks)-2, prefix tokens dropped, no final norm.

    Same as timm `get_intermediate_layers(x, n={len(blocks) - 2})[0]`, but the last block is never run.
    """
    (features,) = vit.forward_intermediates(
        x, indices=[len(vit.blocks) - 2], stop_early=True, output_fmt="NLC", intermediates_only=True
    )
    return features


class VisionBackbone(nn.Module):
    """Fused ViT featurizers: {name: [B, 3, S, S]} -> [B, num_patches, embed_dim].

    Featurizer attributes follow prismatic-vlms: `dino_featurizer`, `siglip_featurizer` when there are several
    branches, `featurizer` for a single one (so state_dict keys are e.g. `dino_featurizer.blocks.0.attn.qkv.weight`).
    """

    def __init__(self, config: VisionBackboneConfig) -> None:
        super().__init__()
        self.config = config
        self.branch_attrs = {
            b.name: "featurizer" if len(config.branches) == 1 else f"{b.name}_featurizer" for b in config.branches
        }
        for b in config.branches:
            self.add_module(self.branch_attrs[b.name], create_vit(b))
        self.image_transform = ImageTransform(
            {b.name: build_transform(config.image_resize_strategy, b.img_size, b.mean, b.std) for b in config.branches}
        )

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def num_patches(self) -> int:
        return self.config.num_patches

    def featurizer_for(self, branch_name: str) -> VisionTransformer:
        return getattr(self, self.branch_attrs[branch_name])

    def forward(self, pixel_values: dict[str, torch.Tensor]) -> torch.Tensor:
        """pixel_values: {branch name: [B, 3, S, S]} -> [B, P, embed_dim] (branches concatenated in config order)."""
        return torch.cat(
            [
                penultimate_patch_features(self.featurizer_for(b.name), pixel_values[b.name])
                for b in self.config.branches
            ],
            dim=2,
        )


def build_vision_backbone(cfg: VisionBackboneConfig) -> VisionBackbone:
    """The tower with random weights (on the meta device under `torch.device("meta")`: no memory, no init cost)."""
    return VisionBackbone(cfg)
