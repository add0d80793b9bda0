"""Spec: the three resize strategies, checked pixel for pixel against a hand-written PIL + numpy reference."""

import numpy as np
import pytest
import timm.data
import torch
from PIL import Image

from cobra_app.model.transforms import LetterboxPad, build_transform, letterbox_fill
from cobra_app.model.vision import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SIGLIP_MEAN,
    SIGLIP_STD,
    VISION_BACKBONES,
    build_vision_backbone,
)

SIZE = 32
NORMS = {"dino": (IMAGENET_MEAN, IMAGENET_STD), "siglip": (SIGLIP_MEAN, SIGLIP_STD)}
STRATEGIES = ["resize-naive", "resize-crop", "letterbox"]


def make_image(w: int, h: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(h, w, 4 if mode == "RGBA" else 3), dtype=np.uint8)
    return Image.fromarray(array, mode=mode)


# ---- hand-written reference -------------------------------------------------------------------------------------


def ref_resize_naive(img: Image.Image, s: int, mean) -> Image.Image:
    return img.resize((s, s), Image.BICUBIC)


def ref_resize_crop(img: Image.Image, s: int, mean) -> Image.Image:
    w, h = img.size
    nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
    array = np.asarray(img.resize((nw, nh), Image.BICUBIC))
    top, left = round((nh - s) / 2), round((nw - s) / 2)
    return Image.fromarray(array[top : top + s, left : left + s])


def ref_letterbox(img: Image.Image, s: int, mean) -> Image.Image:
    w, h = img.size
    m = max(w, h)
    hp, vp = (m - w) // 2, (m - h) // 2
    fill = [int(255 * c) for c in mean]
    canvas = np.empty((h + 2 * vp, w + 2 * hp, 3), dtype=np.uint8)
    canvas[:] = fill
    canvas[vp : vp + h, hp : hp + w] = np.asarray(img)
    return ref_resize_crop(Image.fromarray(canvas), s, mean)


REFERENCE = {"resize-naive": ref_resize_naive, "resize-crop": ref_resize_crop, "letterbox": ref_letterbox}


def reference(img: Image.Image, strategy: str, s: int, mean, std) -> torch.Tensor:
    pixels = np.asarray(REFERENCE[strategy](img.convert("RGB"), s, mean)).astype(np.float32) / np.float32(255)
    normalized = (pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(normalized.transpose(2, 0, 1).copy())


# ---- tests ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("branch", sorted(NORMS))
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("w, h", [(45, 30), (23, 61)])  # landscape with odd padding, portrait
def test_matches_reference_pixel_for_pixel(strategy, branch, w, h):
    mean, std = NORMS[branch]
    img = make_image(w, h)
    out = build_transform(strategy, SIZE, mean, std)(img)
    assert out.shape == (3, SIZE, SIZE) and out.dtype == torch.float32
    # one 8-bit level is >= 1/255/0.5 ~ 0.008 after normalization, so this tolerance means identical pixels
    torch.testing.assert_close(out, reference(img, strategy, SIZE, mean, std), rtol=0, atol=1e-5)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategies_differ_on_non_square_images(strategy):
    img = make_image(45, 30)
    others = [s for s in STRATEGIES if s != strategy]
    out = build_transform(strategy, SIZE, *NORMS["dino"])(img)
    for other in others:
        assert not torch.allclose(out, build_transform(other, SIZE, *NORMS["dino"])(img))


@pytest.mark.parametrize("mode", ["RGBA", "L", "P"])
def test_converts_to_rgb_first(mode):
    img = make_image(40, 27, "RGBA" if mode == "RGBA" else "RGB")
    img = img if mode == "RGBA" else img.convert(mode)
    for strategy in STRATEGIES:
        transform = build_transform(strategy, SIZE, *NORMS["siglip"])
        torch.testing.assert_close(transform(img), transform(img.convert("RGB")), rtol=0, atol=0)


def test_letterbox_fill_values():
    assert letterbox_fill(IMAGENET_MEAN) == (123, 116, 103)
    assert letterbox_fill(SIGLIP_MEAN) == (127, 127, 127)


def test_letterbox_pad_follows_release_rule():
    img = Image.new("RGB", (45, 30), (1, 2, 3))
    padded = LetterboxPad((123, 116, 103))(img)
    assert padded.size == (45, 44)  # vp = int(15 / 2) = 7 on each side: one row short of square
    array = np.asarray(padded)
    assert (array[:7] == (123, 116, 103)).all() and (array[-7:] == (123, 116, 103)).all()
    assert (array[7:37] == (1, 2, 3)).all()
    tall = LetterboxPad((0, 0, 0))(Image.new("RGB", (20, 31)))
    assert tall.size == (30, 31)  # hp = int(11 / 2) = 5


def test_letterbox_border_is_mean_colour_after_normalization():
    img = Image.new("RGB", (64, 16), (255, 255, 255))  # wide: 24 px bands of fill above and below
    out = build_transform("letterbox", SIZE, *NORMS["dino"])(img)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None], torch.tensor(IMAGENET_STD)[:, None]
    fill = (torch.tensor([123, 116, 103], dtype=torch.float32) / 255)[:, None]
    torch.testing.assert_close(out[:, 0, :], (fill - mean).div(std).expand(3, SIZE), rtol=0, atol=1e-5)


def test_resize_crop_equals_timm_eval_transform():
    """The release's resize-crop for DINOv2 is timm's eval transform at crop_pct 1.0."""
    img = make_image(45, 30)
    timm_transform = timm.data.create_transform(
        input_size=(3, SIZE, SIZE), interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=1.0
    )
    ours = build_transform("resize-crop", SIZE, IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(ours(img), timm_transform(img), rtol=0, atol=1e-6)


def test_unknown_strategy_is_rejected():
    with pytest.raises(ValueError, match="resize-naive"):
        build_transform("squash", SIZE, *NORMS["dino"])


def test_backbone_image_transform_uses_each_branch_normalization():
    cfg = VISION_BACKBONES["tiny-dinosiglip-32px"]
    img = make_image(45, 30)
    pixels = build_vision_backbone(cfg).image_transform(img)
    for name, (mean, std) in NORMS.items():
        torch.testing.assert_close(pixels[name], reference(img, "resize-naive", 32, mean, std), rtol=0, atol=1e-5)
