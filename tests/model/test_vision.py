"""Spec: the vision tower returns each ViT's second-to-last-block patch tokens (no prefix, no final norm),
concatenated on channels, with the registry's explicit hyper-parameters equal to the timm hub models'."""

import dataclasses
import json

import pytest
import timm
import torch
from PIL import Image
from timm.layers import HybridEmbed

from cobra_app.model import vision
from cobra_app.model.vision import (
    VISION_BACKBONES,
    ConvStem,
    VisionBackboneConfig,
    ViTBranchConfig,
    build_vision_backbone,
    create_vit,
)

TINY = VISION_BACKBONES["tiny-dinosiglip-32px"]
REAL = VISION_BACKBONES["dinosiglip-vit-so-384px"]


def random_pixels(cfg: VisionBackboneConfig, batch: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {b.name: torch.randn(batch, 3, b.img_size, b.img_size, generator=g) for b in cfg.branches}


@pytest.fixture(scope="module")
def tiny_backbone() -> vision.VisionBackbone:
    torch.manual_seed(0)
    return build_vision_backbone(TINY).eval()


def test_features_equal_timm_second_to_last_layer(tiny_backbone):
    pixels = random_pixels(TINY)
    with torch.no_grad():
        out = tiny_backbone(pixels)
        expected = []
        for name, attr in [("dino", "dino_featurizer"), ("siglip", "siglip_featurizer")]:
            vit = getattr(tiny_backbone, attr)
            (ref,) = vit.get_intermediate_layers(pixels[name], n={len(vit.blocks) - 2})
            last = vit.get_intermediate_layers(pixels[name], n={len(vit.blocks) - 1})[0]
            assert not torch.allclose(ref, last)  # the layer choice matters for these weights
            expected.append(ref)
    assert out.shape == (2, 16, 32 + 48)
    torch.testing.assert_close(out[..., :32], expected[0], rtol=0, atol=0)
    torch.testing.assert_close(out[..., 32:], expected[1], rtol=0, atol=0)
    torch.testing.assert_close(out, torch.cat(expected, dim=2), rtol=0, atol=0)


def test_features_by_hand_drop_prefix_tokens_and_skip_final_norm(tiny_backbone):
    """Independent of timm's intermediate API: embed, run blocks[:-1], drop the 1+4 (dino) / 0 (siglip) prefix."""
    pixels = random_pixels(TINY, batch=1)
    with torch.no_grad():
        parts = []
        for branch, n_prefix in zip(TINY.branches, [5, 0]):
            vit = tiny_backbone.featurizer_for(branch.name)
            assert vit.num_prefix_tokens == n_prefix
            x = vit.norm_pre(vit._pos_embed(vit.patch_embed(pixels[branch.name])))
            for blk in vit.blocks[:-1]:
                x = blk(x)
            parts.append(x[:, n_prefix:])
        torch.testing.assert_close(tiny_backbone(pixels), torch.cat(parts, dim=2), rtol=0, atol=1e-6)


def test_last_block_and_final_norm_are_not_run(tiny_backbone):
    calls = []
    hooks = []
    for attr in ["dino_featurizer", "siglip_featurizer"]:
        vit = getattr(tiny_backbone, attr)
        for mod in [vit.blocks[-1], vit.norm]:
            hooks.append(mod.register_forward_hook(lambda *_: calls.append(1)))
    try:
        with torch.no_grad():
            tiny_backbone(random_pixels(TINY))
    finally:
        for h in hooks:
            h.remove()
    assert calls == []


def test_attributes_follow_prismatic_names(tiny_backbone):
    assert tiny_backbone.embed_dim == 80 and tiny_backbone.num_patches == 16
    assert {k.split(".")[0] for k in tiny_backbone.state_dict()} == {"dino_featurizer", "siglip_featurizer"}
    single = VisionBackboneConfig("tiny-siglip", (TINY.branches[1],))
    model = build_vision_backbone(single)
    assert {k.split(".")[0] for k in model.state_dict()} == {"featurizer"}
    assert model(random_pixels(single)).shape == (2, 16, 48)


def test_image_transform_feeds_forward(tiny_backbone):
    image = Image.new("RGB", (50, 37), (10, 200, 30))
    pixels = tiny_backbone.image_transform(image)
    assert set(pixels) == {"dino", "siglip"}
    assert all(p.shape == (3, 32, 32) for p in pixels.values())
    with torch.no_grad():
        assert tiny_backbone({k: v[None] for k, v in pixels.items()}).shape == (1, 16, 80)


@pytest.mark.parametrize(
    "backbone_id, num_patches, embed_dim, attrs",
    [
        ("dinosiglip-vit-so-384px", 729, 2176, {"dino_featurizer", "siglip_featurizer"}),
        ("siglip-vit-so400m-384px", 729, 1152, {"featurizer"}),
    ],
)
def test_real_configs_shapes_on_meta(backbone_id, num_patches, embed_dim, attrs):
    cfg = VISION_BACKBONES[backbone_id]
    with torch.device("meta"):
        model = build_vision_backbone(cfg)
        out = model({b.name: torch.empty(1, 3, 384, 384) for b in cfg.branches})
    assert (model.num_patches, model.embed_dim) == (num_patches, embed_dim)
    assert out.shape == (1, num_patches, embed_dim)
    assert cfg.patch_grid**2 == num_patches  # row-major patch tokens, patch_grid per side
    assert {k.split(".")[0] for k in model.state_dict()} == attrs


@pytest.mark.parametrize("branch", REAL.branches, ids=lambda b: b.name)
def test_explicit_kwargs_build_the_hub_model_structure(branch: ViTBranchConfig):
    """Timm's registered model, module for module (names, types, norms' eps, activations, shapes: `repr` shows them
    all), so its pretrained weights load into our tower unchanged (pretrained=False: no download)."""
    with torch.device("meta"):
        ours = create_vit(branch)
        hub = timm.create_model(branch.timm_model_name, pretrained=False, num_classes=0, img_size=branch.img_size)
    assert repr(ours) == repr(hub)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in hub.state_dict().items()}
    assert {n: type(m) for n, m in ours.named_modules()} == {n: type(m) for n, m in hub.named_modules()}
    assert (ours.num_prefix_tokens, ours.no_embed_class) == (hub.num_prefix_tokens, hub.no_embed_class)
    assert hub.pretrained_cfg["mean"] == branch.mean and hub.pretrained_cfg["std"] == branch.std


STRUCTURAL = [
    "class_token",
    "reg_tokens",
    "no_embed_class",
    "act_layer",
    "global_pool",
    "mlp_ratio",
    "mean",
    "std",
]


@pytest.mark.parametrize("backbone_id", ["tiny-dinosiglip-32px", "small-dinosiglip-64px"])
def test_offline_configs_keep_each_family_structure(backbone_id):
    cfg = VISION_BACKBONES[backbone_id]
    assert [b.name for b in cfg.branches] == [b.name for b in REAL.branches]
    for small, real in zip(cfg.branches, REAL.branches):
        assert small.timm_model_name is None
        assert {f: getattr(small, f) for f in STRUCTURAL} == {f: getattr(real, f) for f in STRUCTURAL}
        assert (small.init_values is None) == (real.init_values is None)  # layer scale where the family has it


def test_conv_stem_replaces_the_linear_patch_embedding_on_the_same_grid():
    cfg = VISION_BACKBONES["small-dinosiglip-64px"]
    backbone = build_vision_backbone(cfg)
    for branch in cfg.branches:
        vit = backbone.featurizer_for(branch.name)
        assert isinstance(vit.patch_embed, HybridEmbed) and isinstance(vit.patch_embed.backbone, ConvStem)
        assert vit.patch_embed.num_patches == branch.num_patches == 16
    pixels = {b.name: torch.randn(2, 3, 64, 64) for b in cfg.branches}
    features = backbone.eval()(pixels)
    assert features.shape == (2, 16, 96 + 128)
    # patch tokens stay row-major: a change in the bottom-right corner moves the last patch's stem output only there
    stem = backbone.featurizer_for("siglip").patch_embed
    changed = {k: v.clone() for k, v in pixels.items()}
    changed["siglip"][:, :, 48:, 48:] += 1.0
    diff = (stem(changed["siglip"]) - stem(pixels["siglip"])).abs().sum(-1)  # [2, 16]
    assert diff[:, -1].min() > 0 and diff[:, :-1].max() == 0


def test_conv_stem_stride_must_equal_the_patch_size():
    branch = VISION_BACKBONES["small-dinosiglip-64px"].branches[0]
    with pytest.raises(ValueError, match="stride"):
        dataclasses.replace(branch, conv_stem=(16, 32))


def test_small_demo_config_sizes():
    cfg = VISION_BACKBONES["small-dinosiglip-64px"]
    assert (cfg.image_size, cfg.num_patches, cfg.embed_dim) == (64, 16, 96 + 128)


@pytest.mark.parametrize("backbone_id", sorted(VISION_BACKBONES))
def test_config_json_round_trip(backbone_id):
    cfg = VISION_BACKBONES[backbone_id]
    assert cfg.backbone_id == backbone_id
    restored = VisionBackboneConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert restored == cfg
    letterbox = dataclasses.replace(cfg, image_resize_strategy="letterbox")
    assert VisionBackboneConfig.from_dict(json.loads(json.dumps(letterbox.to_dict()))) == letterbox


def test_config_rejects_mismatched_grids():
    dino, siglip = TINY.branches
    with pytest.raises(ValueError):
        VisionBackboneConfig("bad", (dino, dataclasses.replace(siglip, patch_size=4)))
    with pytest.raises(ValueError):
        VisionBackboneConfig("bad", (dino, dataclasses.replace(dino, embed_dim=64)))  # duplicate name
