"""Image transforms: PIL image -> normalized pixel tensors, one per vision branch.

The three resize strategies of the Cobra / prismatic-vlms release (reference section 3):

    resize-naive : resize to exactly S x S (bicubic, aspect ratio not kept)
    resize-crop  : resize the shorter side to S (bicubic), center-crop S x S
    letterbox    : pad to (nearly) square with the mean colour, then resize-crop

Every transform converts to RGB first and ends with ToTensor ([0, 1]) + Normalize(mean, std).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

BICUBIC = T.InterpolationMode.BICUBIC
PILTransform = Callable[[Image.Image], Image.Image]


def to_rgb(image: Image.Image) -> Image.Image:
    """Drop alpha / expand grayscale and palette images to 3 channels."""
    return image.convert("RGB")


@dataclass(frozen=True)
class LetterboxPad:
    """Pad symmetrically towards a square, exactly as the release's LetterboxPad.

    hp = int((max_wh - w) / 2), vp = int((max_wh - h) / 2), padding (left, top, right, bottom) = (hp, vp, hp, vp):
    an odd difference leaves the image one pixel short of square (the crop that follows takes care of it).
    """

    fill: tuple[int, int, int]

    def __call__(self, image: Image.Image) -> Image.Image:
        (w, h), max_wh = image.size, max(image.size)
        hp, vp = int((max_wh - w) / 2), int((max_wh - h) / 2)
        return TF.pad(image, [hp, vp, hp, vp], fill=self.fill, padding_mode="constant")


def letterbox_fill(mean: tuple[float, ...]) -> tuple[int, int, int]:
    """Padding colour = the normalization mean in 0..255, truncated like the release: int(255 * m)."""
    return tuple(int(255 * m) for m in mean)


def _resize_naive(size: int, mean: tuple[float, ...]) -> list[PILTransform]:
    return [T.Resize((size, size), interpolation=BICUBIC)]


def _resize_crop(size: int, mean: tuple[float, ...]) -> list[PILTransform]:
    return [T.Resize(size, interpolation=BICUBIC), T.CenterCrop(size)]


def _letterbox(size: int, mean: tuple[float, ...]) -> list[PILTransform]:
    return [LetterboxPad(letterbox_fill(mean)), *_resize_crop(size, mean)]


# strategy name -> (image size S, normalization mean) -> PIL-to-PIL resize steps
RESIZE_STRATEGIES: dict[str, Callable[[int, tuple[float, ...]], list[PILTransform]]] = {
    "resize-naive": _resize_naive,
    "resize-crop": _resize_crop,
    "letterbox": _letterbox,
}


def build_transform(
    strategy: str, size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image (any mode, any size) -> float32 tensor [3, size, size], normalized with (mean, std)."""
    if strategy not in RESIZE_STRATEGIES:
        raise ValueError(f"unknown image resize strategy {strategy!r}; known: {sorted(RESIZE_STRATEGIES)}")
    return T.Compose([to_rgb, *RESIZE_STRATEGIES[strategy](size, mean), T.ToTensor(), T.Normalize(mean, std)])


@dataclass(frozen=True)
class ImageTransform:
    """PIL image -> {branch name: tensor [3, H, W]}: the input format of VisionBackbone.forward (after batching)."""

    transforms: dict[str, Callable[[Image.Image], torch.Tensor]]

    def __call__(self, image: Image.Image) -> dict[str, torch.Tensor]:
        return {name: transform(image) for name, transform in self.transforms.items()}
