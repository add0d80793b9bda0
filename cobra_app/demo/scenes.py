"""Synthetic scene world for the demo Cobra: one to four coloured shapes on a lightly textured background.

Coordinates are normalised to [0, 1] with the origin at the top-left corner (y grows downwards, as in images); an
object's `size` is the radius of its bounding circle. Everything is a pure function of the numpy Generator passed in,
and `render` is a pure function of the Scene, so a seed fully determines images and answers.

`sample_scene` draws the original look (flat fills, 64 px, light backgrounds); `sample_styled_scene` draws the same
world in a rendering style of `cobra_app.demo.styles` (other palettes, outlines, rotations, sizes, resolutions).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from cobra_app.demo.styles import MAX_ROTATION, SIZE_RANGE_STYLED, RenderStyle, sample_fill, sample_style


def _regular_polygon(n: int, phase: float) -> tuple[tuple[float, float], ...]:
    """Vertices of a regular n-gon on the unit circle, starting at angle `phase` (radians, y down)."""
    angles = phase + 2 * np.pi * np.arange(n) / n
    return tuple((float(np.cos(a)), float(np.sin(a))) for a in angles)


_ARM = 0.34  # half-width of the cross arms, relative to the radius

# shape name -> polygon inscribed in the unit circle (centred on the origin, y down); each contains its centre
SHAPES: dict[str, tuple[tuple[float, float], ...]] = {
    "circle": _regular_polygon(48, 0.0),
    "square": _regular_polygon(4, np.pi / 4),
    "triangle": _regular_polygon(3, -np.pi / 2),  # pointing up
    "diamond": _regular_polygon(4, -np.pi / 2),
    "cross": ((-_ARM, -1), (_ARM, -1), (_ARM, -_ARM), (1, -_ARM), (1, _ARM), (_ARM, _ARM),
              (_ARM, 1), (-_ARM, 1), (-_ARM, _ARM), (-1, _ARM), (-1, -_ARM), (-_ARM, -_ARM)),
}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 210, 30),
    "green": (40, 160, 60),
    "blue": (40, 90, 220),
    "purple": (140, 60, 180),
}
# sampling frequencies, deliberately uneven so that POPE's "popular" negatives mean something
SHAPE_WEIGHTS: dict[str, float] = {"circle": 0.28, "square": 0.24, "triangle": 0.20, "diamond": 0.16, "cross": 0.12}
COLOUR_WEIGHTS: dict[str, float] = {"red": 0.22, "blue": 0.20, "green": 0.18, "yellow": 0.15, "orange": 0.13,
                                    "purple": 0.12}
BACKGROUNDS: tuple[tuple[int, int, int], ...] = (
    (245, 245, 245), (228, 228, 228), (242, 234, 218), (222, 232, 242), (230, 240, 226),
)
# relation name -> (coordinate, sign): `a REL b` holds when sign * (b.coord - a.coord) > RELATION_MARGIN
RELATIONS: dict[str, tuple[str, int]] = {
    "left of": ("x", 1), "right of": ("x", -1), "above": ("y", 1), "below": ("y", -1),
}

MAX_OBJECTS = 4
SIZE_RANGE = (0.08, 0.16)  # bounding radius, fraction of the image side (5-10 px at 64 px)
EDGE_MARGIN = 0.03  # free border between any object and the image edge
OBJECT_GAP = 0.04  # free space between the bounding circles of two objects
ORDER_GAP = 0.04  # minimum |dx| between two centres, so that "left to right" is a well-defined order
RELATION_MARGIN = 0.10  # minimum centre offset along the axis for a spatial relation to be asked at all
TEXTURE_MAX = 10.0  # amplitude (grey levels) of the low-frequency background texture
GRAIN_MAX = 6.0  # standard deviation (grey levels) of the per-pixel noise
SUPERSAMPLE = 4  # draw at 4x and box-downsample, for antialiased edges
ORIGINAL_LOOK_SHARE = 0.3  # share of training scenes drawn in the original look (the rest: a "train"-family style)


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: float
    x: float
    y: float
    rotation: float = 0.0  # degrees, clockwise on screen
    stretch: float = 1.0  # horizontal scale before rotation (a narrower diamond), <= 1 keeps the bounding circle
    rgb: tuple[int, int, int] | None = None  # this object's shade of its colour; None = COLOURS[colour]

    @property
    def fill(self) -> tuple[int, int, int]:
        return COLOURS[self.colour] if self.rgb is None else self.rgb

    @property
    def name(self) -> str:
        """Unique reference within a scene, e.g. "red circle"."""
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: tuple[int, int, int]
    texture: float  # amplitude of the low-frequency background texture, 0 = plain
    grain: float  # per-pixel noise standard deviation, 0 = none
    noise_seed: int
    style: RenderStyle | None = None  # None: the original look (flat fills, plain or textured light background)

    def left_to_right(self) -> list[SceneObject]:
        """Objects in the canonical (left-to-right) order used by descriptions."""
        return sorted(self.objects, key=lambda o: o.x)


def relation_holds(a: SceneObject, b: SceneObject, relation: str) -> bool | None:
    """Whether `a <relation> b` holds; None when the centres are too close along that axis to tell."""
    coord, sign = RELATIONS[relation]
    delta = sign * (getattr(b, coord) - getattr(a, coord))
    return None if abs(delta) <= RELATION_MARGIN else delta > 0


PAIRS: tuple[tuple[str, str], ...] = tuple((s, c) for s in SHAPES for c in COLOURS)
PAIR_WEIGHTS: dict[tuple[str, str], float] = {(s, c): SHAPE_WEIGHTS[s] * COLOUR_WEIGHTS[c] for s, c in PAIRS}


def _fits(size: float, x: float, y: float, placed: list[SceneObject]) -> bool:
    """Whether a new object keeps its gap to, and a distinct left-to-right position from, every placed one."""
    return all(np.hypot(x - o.x, y - o.y) > size + o.size + OBJECT_GAP and abs(x - o.x) >= ORDER_GAP for o in placed)


def _layout(rng: np.random.Generator, n: int, size_range: tuple[float, float]) -> list[SceneObject]:
    """n objects with distinct (shape, colour) pairs (drawn by PAIR_WEIGHTS), no overlaps, within the borders."""
    p = np.array([PAIR_WEIGHTS[pair] for pair in PAIRS])
    while True:  # restart the layout if rejection sampling gets stuck (rare)
        pairs = [PAIRS[i] for i in rng.choice(len(PAIRS), size=n, replace=False, p=p / p.sum())]
        placed: list[SceneObject] = []
        for shape, colour in pairs:
            for _ in range(100):
                size = float(rng.uniform(*size_range))
                x, y = (float(v) for v in rng.uniform(size + EDGE_MARGIN, 1 - size - EDGE_MARGIN, size=2))
                if _fits(size, x, y, placed):
                    placed.append(SceneObject(shape, colour, size, x, y))
                    break
        if len(placed) == n:
            return placed


def sample_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    """Draw a scene in the original look: 1-4 objects with distinct (shape, colour) pairs, no overlaps, within the
    borders."""
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else n_objects
    placed = _layout(rng, n, SIZE_RANGE)
    return Scene(
        objects=tuple(placed),
        background=BACKGROUNDS[rng.integers(len(BACKGROUNDS))],
        texture=float(rng.uniform(0, TEXTURE_MAX)) if rng.random() < 0.5 else 0.0,
        grain=float(rng.uniform(0, GRAIN_MAX)) if rng.random() < 0.5 else 0.0,
        noise_seed=int(rng.integers(2**31)),
    )


def sample_styled_scene(rng: np.random.Generator, family: str = "train", n_objects: int | None = None) -> Scene:
    """Draw a scene of the same world in a style of rendering `family` (`cobra_app.demo.styles`): objects of radius
    SIZE_RANGE_STYLED, small rotations, diamonds of varied width, each object its own shade of its colour."""
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else n_objects
    placed = [SceneObject(o.shape, o.colour, o.size, o.x, o.y,
                          rotation=float(rng.uniform(-1, 1) * MAX_ROTATION[o.shape]),
                          stretch=float(rng.uniform(0.7, 1.0)) if o.shape == "diamond" else 1.0,
                          rgb=sample_fill(rng, o.colour))
              for o in _layout(rng, n, SIZE_RANGE_STYLED)]
    style = sample_style(rng, family)
    return Scene(
        objects=tuple(placed),
        background=style.background,
        texture=float(rng.uniform(0, TEXTURE_MAX)) if rng.random() < 0.4 else 0.0,
        grain=float(rng.uniform(0, 2 * GRAIN_MAX)) if rng.random() < 0.5 else 0.0,
        noise_seed=int(rng.integers(2**31)),
        style=style,
    )


def sample_training_scene(rng: np.random.Generator) -> Scene:
    """A scene as training draws them: the original look with probability ORIGINAL_LOOK_SHARE, else a style of the
    "train" family."""
    return sample_scene(rng) if rng.random() < ORIGINAL_LOOK_SHARE else sample_styled_scene(rng, "train")


def render(scene: Scene, size: int | None = None) -> Image.Image:
    """Rasterise a scene to an RGB image of `size` x `size` pixels (default: its style's resolution; 64 px for the
    original look)."""
    if scene.style is not None:
        return _render_styled(scene, scene.style.resolution if size is None else size)
    size = 64 if size is None else size
    rng = np.random.default_rng(scene.noise_seed)
    big = size * SUPERSAMPLE
    shapes = Image.new("RGBA", (big, big))
    draw = ImageDraw.Draw(shapes)
    for o in scene.objects:
        draw.polygon(_outline(o, big), fill=COLOURS[o.colour])
    texture = Image.fromarray(rng.normal(size=(4, 4)).astype(np.float32))
    texture = texture.resize((size, size), Image.Resampling.BILINEAR)
    background = np.asarray(scene.background, np.float32) + scene.texture * np.asarray(texture)[..., None]
    background = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8)).convert("RGBA")
    image = Image.alpha_composite(background, shapes.resize((size, size), Image.Resampling.BOX)).convert("RGB")
    pixels = np.asarray(image, np.float32) + scene.grain * rng.normal(size=(size, size, 3))
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


STYLED_CANVAS = 256  # styled scenes are drawn at about this many pixels a side, then box-downsampled


@dataclass(frozen=True)
class _Window:
    """A square of output pixels around an object ([top, top + side) x [left, left + side)) and its supersampling."""

    left: int
    top: int
    side: int
    supersample: int

    @classmethod
    def around(cls, o: SceneObject, size: int, supersample: int, margin: float) -> _Window:
        left = max(0, int((o.x - o.size - margin) * size))
        top = max(0, int((o.y - o.size - margin) * size))
        right = min(size, int(np.ceil((o.x + o.size + margin) * size)))
        bottom = min(size, int(np.ceil((o.y + o.size + margin) * size)))
        side = max(right - left, bottom - top)
        return cls(min(left, size - side), min(top, size - side), side, supersample)

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.side), slice(self.left, self.left + self.side)

    def coverage(self, points: list[tuple[float, float]], width: int = 0) -> np.ndarray:
        """[side, side, 1] float32 in [0, 1]: how much of each pixel a polygon (in supersampled whole-image
        coordinates) covers; with `width`, its outline stroke of that many supersampled pixels instead."""
        big = self.side * self.supersample
        shift_x, shift_y = self.left * self.supersample, self.top * self.supersample
        canvas = Image.new("L", (big, big))
        draw = ImageDraw.Draw(canvas)
        local = [(u - shift_x, v - shift_y) for u, v in points]
        if width:
            draw.polygon(local, outline=255, width=width)
        else:
            draw.polygon(local, fill=255)
        small = canvas.resize((self.side, self.side), Image.Resampling.BOX)
        return np.asarray(small, np.float32)[..., None] / 255


def _styled_background(scene: Scene, size: int, rng: np.random.Generator) -> np.ndarray:
    """[size, size, 3] float32: plain or gradient background, low-frequency texture, and the held-out family's
    stripes."""
    style = scene.style
    centres = ((np.arange(size) + 0.5) / size).astype(np.float32)  # pixel centres along a side, in units of it
    ys, xs = centres[:, None], centres[None, :]  # [size, 1], [1, size]: they broadcast to the whole grid
    start = np.asarray(style.background, np.float32)
    if style.background_to is not None:
        along = xs * np.cos(style.gradient_angle) + ys * np.sin(style.gradient_angle)  # [size, size]
        t = ((along - along.min()) / max(np.ptp(along), 1e-6))[..., None]
        background = start * (1 - t) + np.asarray(style.background_to, np.float32) * t
    else:
        background = np.broadcast_to(start, (size, size, 3)).astype(np.float32)
    coarse = rng.normal(size=(4, 4)).astype(np.float32)  # drawn even when unused: the noise that follows depends on it
    if scene.texture:
        texture = Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR)
        background += np.float32(scene.texture) * np.asarray(texture)[..., None]
    if style.stripes:
        across = xs * np.sin(style.gradient_angle) - ys * np.cos(style.gradient_angle)
        bands = np.sign(np.sin(2 * np.pi * across * rng.uniform(5, 12))).astype(np.float32)
        background = background * (1 + np.float32(style.stripes) * bands)[..., None]
    return background


def _render_styled(scene: Scene, size: int) -> Image.Image:
    """Rasterise a styled scene: background, drop shadows (held-out family), shaded fills, outlines, noise, blur,
    JPEG. Each object is composited within a window around it."""
    style = scene.style
    rng = np.random.default_rng(scene.noise_seed)
    supersample = max(1, round(STYLED_CANVAS / size))
    big = size * supersample
    image = _styled_background(scene, size, rng)
    margin = 0.04 + style.outline_width
    if style.shadow:
        shift = 0.025 * big
        for o in scene.objects:
            window = _Window.around(o, size, supersample, margin)
            shadow = window.coverage([(u + shift, v + shift) for u, v in _outline(o, big)])
            image[window.slices] *= 1 - np.float32(style.shadow) * shadow
    for o in scene.objects:
        window = _Window.around(o, size, supersample, margin)
        fill = np.asarray(o.fill, np.float32)
        if style.shading:
            ys, xs = (np.mgrid[window.slices] + 0.5) / size
            across = ((xs - o.x) * np.cos(style.gradient_angle) + (ys - o.y) * np.sin(style.gradient_angle)) / o.size
            fill = np.clip(fill * (1 + style.shading * np.clip(across, -1, 1)).astype(np.float32)[..., None], 0, 255)
        points = _outline(o, big)
        covered = window.coverage(points)
        region = image[window.slices]
        region[:] = region * (1 - covered) + fill * covered
        if style.outline_width:
            line = window.coverage(points, width=max(1, round(style.outline_width * big)))
            colour = np.asarray(style.outline if style.outline is not None else np.asarray(o.fill) * 0.45, np.float32)
            region[:] = region * (1 - line) + colour * line
    if scene.grain:
        noise = rng.standard_normal(size=(size, size, 3)).astype(np.float32)  # = rng.normal(), a little faster
        noise *= np.float32(scene.grain)
        image += noise
    picture = Image.fromarray(np.clip(np.rint(image, out=image), 0, 255, out=image).astype(np.uint8))
    if style.blur:
        picture = picture.filter(ImageFilter.GaussianBlur(style.blur))
    if style.jpeg_quality is not None:
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=style.jpeg_quality)
        picture = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return picture


def object_map(scene: Scene, size: int = 64) -> np.ndarray:
    """[size, size] uint8: 1 + the index (in `scene.objects`) of the object covering each pixel, 0 for background.
    Same geometry as `render`, without antialiasing."""
    image = Image.new("L", (size, size))
    draw = ImageDraw.Draw(image)
    for k, o in enumerate(scene.objects):
        draw.polygon(_outline(o, size), fill=k + 1)
    return np.asarray(image)


def _outline(o: SceneObject, size: int) -> list[tuple[float, float]]:
    """The object's polygon in pixel coordinates of a `size` x `size` canvas (stretched, then rotated)."""
    r = o.size * size
    vertices = SHAPES[o.shape]
    if o.rotation or o.stretch != 1.0:
        cos, sin = np.cos(np.radians(o.rotation)), np.sin(np.radians(o.rotation))
        vertices = tuple((float(u * o.stretch * cos - v * sin), float(u * o.stretch * sin + v * cos))
                         for u, v in vertices)
    return [(o.x * size + r * u, o.y * size + r * v) for u, v in vertices]
