"""Synthetic scene world for the demo Cobra: one to four coloured shapes on a lightly textured background.

Coordinates are normalised to [0, 1] with the origin at the top-left corner (y grows downwards, as in images); an
object's `size` is the radius of its bounding circle. Everything is a pure function of the numpy Generator passed in,
and `render` is a pure function of the Scene, so a seed fully determines images and answers.
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw


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


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: float
    x: float
    y: float

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


def sample_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    """Draw a scene: 1-4 objects with distinct (shape, colour) pairs, no overlaps, within the borders."""
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else n_objects
    p = np.array([PAIR_WEIGHTS[pair] for pair in PAIRS])
    while True:  # restart the layout if rejection sampling gets stuck (rare)
        pairs = [PAIRS[i] for i in rng.choice(len(PAIRS), size=n, replace=False, p=p / p.sum())]
        placed: list[SceneObject] = []
        for shape, colour in pairs:
            for _ in range(100):
                size = float(rng.uniform(*SIZE_RANGE))
                x, y = (float(v) for v in rng.uniform(size + EDGE_MARGIN, 1 - size - EDGE_MARGIN, size=2))
                if _fits(size, x, y, placed):
                    placed.append(SceneObject(shape, colour, size, x, y))
                    break
        if len(placed) == n:
            break
    return Scene(
        objects=tuple(placed),
        background=BACKGROUNDS[rng.integers(len(BACKGROUNDS))],
        texture=float(rng.uniform(0, TEXTURE_MAX)) if rng.random() < 0.5 else 0.0,
        grain=float(rng.uniform(0, GRAIN_MAX)) if rng.random() < 0.5 else 0.0,
        noise_seed=int(rng.integers(2**31)),
    )


def render(scene: Scene, size: int = 64) -> Image.Image:
    """Rasterise a scene to an RGB image of `size` x `size` pixels."""
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


def object_map(scene: Scene, size: int = 64) -> np.ndarray:
    """[size, size] uint8: 1 + the index (in `scene.objects`) of the object covering each pixel, 0 for background.
    Same geometry as `render`, without antialiasing."""
    image = Image.new("L", (size, size))
    draw = ImageDraw.Draw(image)
    for k, o in enumerate(scene.objects):
        draw.polygon(_outline(o, size), fill=k + 1)
    return np.asarray(image)


def _outline(o: SceneObject, size: int) -> list[tuple[float, float]]:
    """The object's polygon in pixel coordinates of a `size` x `size` canvas."""
    r = o.size * size
    return [(o.x * size + r * u, o.y * size + r * v) for u, v in SHAPES[o.shape]]
