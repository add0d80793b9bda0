"""How a scene looks beyond its objects: rendering styles for the demo world (issue 23).

A `RenderStyle` fixes the resolution, the background (plain, gradient, dark, textured), each object's outline and
shading, blur, noise and JPEG artefacts. `sample_style` draws one for a rendering family: "train" (every combination
the demo model learns from) or "held-out" (drop shadows on a striped background: never drawn for training, reported
on). Named colours are drawn from HSV ranges (`PALETTE_HSV`) so that a model learns the name, not one RGB value.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

RGB = tuple[int, int, int]
RENDER_FAMILIES = ("train", "held-out")
RESOLUTION_RANGE = (48, 256)  # rendered side in pixels; the model's transform resizes to its input size
SIZE_RANGE_STYLED = (0.06, 0.20)  # object radius as a fraction of the side, for styled scenes
# colour name -> (hue range in degrees, saturation range, value range) for styled scenes
PALETTE_HSV: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "red": ((-14.0, 8.0), (0.6, 1.0), (0.6, 1.0)),
    "orange": ((20.0, 40.0), (0.7, 1.0), (0.85, 1.0)),
    "yellow": ((47.0, 62.0), (0.65, 1.0), (0.8, 1.0)),
    "green": ((95.0, 150.0), (0.45, 1.0), (0.45, 0.95)),
    "blue": ((195.0, 245.0), (0.5, 1.0), (0.55, 1.0)),
    "purple": ((262.0, 305.0), (0.4, 1.0), (0.4, 0.95)),
}
# maximum rotation in degrees per shape (squares and diamonds are 45 degrees apart, so they stay well short of that)
MAX_ROTATION: dict[str, float] = {"circle": 180.0, "square": 15.0, "triangle": 25.0, "diamond": 15.0, "cross": 20.0}


@dataclass(frozen=True)
class RenderStyle:
    """Everything about a scene's look that is not its objects' shape, colour name, size and place."""

    resolution: int
    background: RGB
    background_to: RGB | None = None  # linear gradient from `background` to this colour, or plain
    gradient_angle: float = 0.0  # radians
    outline_width: float = 0.0  # fraction of the side (0 = none)
    outline: RGB | None = None  # None = a darker shade of each object's own fill
    shading: float = 0.0  # fill gets lighter/darker by up to this fraction across the object
    blur: float = 0.0  # Gaussian blur radius, in pixels of the rendered image
    jpeg_quality: int | None = None
    shadow: float = 0.0  # drop-shadow opacity (held-out family only)
    stripes: float = 0.0  # striped-background contrast (held-out family only)


def hsv_rgb(hue: float, saturation: float, value: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb((hue % 360.0) / 360.0, saturation, value)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def sample_fill(rng: np.random.Generator, colour: str) -> RGB:
    """An RGB shade of a named colour, drawn from its PALETTE_HSV box."""
    hue, sat, val = PALETTE_HSV[colour]
    return hsv_rgb(rng.uniform(*hue), rng.uniform(*sat), rng.uniform(*val))


def _background(rng: np.random.Generator) -> RGB:
    """Light (most), mid-grey or dark, always of low saturation so that no background reads as a named colour."""
    kind = rng.random()
    value = rng.uniform(0.82, 1.0) if kind < 0.75 else rng.uniform(0.5, 0.75) if kind < 0.88 else rng.uniform(0.06, 0.3)
    return hsv_rgb(rng.uniform(0, 360), rng.uniform(0, 0.14), value)


def sample_style(rng: np.random.Generator, family: str) -> RenderStyle:
    """A style of `family` ("train" or "held-out"); every factor drawn independently."""
    if family not in RENDER_FAMILIES:
        raise ValueError(f"unknown rendering family {family!r}; known: {RENDER_FAMILIES}")
    resolution = int(rng.integers(RESOLUTION_RANGE[0], RESOLUTION_RANGE[1] + 1))
    background = _background(rng)
    background_to = _background(rng) if rng.random() < 0.3 else None
    angle = float(rng.uniform(0, 2 * np.pi))
    outline_width, outline = 0.0, None
    if rng.random() < 0.4:
        outline_width = float(rng.uniform(0.006, 0.03))
        outline = hsv_rgb(0, 0, rng.uniform(0, 0.3)) if rng.random() < 0.7 else None
    shading = float(rng.uniform(0.1, 0.35)) if rng.random() < 0.3 else 0.0
    blur = float(rng.uniform(0.3, 1.2)) if rng.random() < 0.2 else 0.0
    jpeg = int(rng.integers(15, 90)) if rng.random() < 0.3 else None
    held_out = family == "held-out"
    shadow = float(rng.uniform(0.25, 0.5)) if held_out else 0.0
    stripes = float(rng.uniform(0.04, 0.1)) if held_out else 0.0
    return RenderStyle(resolution, background, background_to, angle, outline_width, outline, shading, blur, jpeg,
                       shadow, stripes)
