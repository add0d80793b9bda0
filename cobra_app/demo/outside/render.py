"""A second renderer for the demo world, written apart from `cobra_app.demo.scenes`: shapes drawn from signed distance
fields in numpy (no PIL polygons, no supersampling), named colours taken from common palettes (CSS, matplotlib's
tab10, Kelly) instead of HSV ranges, backgrounds of paper, slate and sky tones, thin outlines on a third of the scenes,
every shape turned a little, radius 0.07-0.19 of the side, 64-224 px. It draws its own layouts too, so that the
outside check shares no code path with training but the names of things.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# named colour -> RGB values that people's palettes use for it
NAMED: dict[str, tuple[tuple[int, int, int], ...]] = {
    "red": ((255, 0, 0), (220, 20, 60), (178, 34, 34), (214, 39, 40), (230, 25, 75), (200, 16, 46)),
    "orange": ((255, 165, 0), (255, 140, 0), (255, 127, 14), (245, 130, 48), (243, 132, 0)),
    "yellow": ((255, 255, 0), (255, 215, 0), (255, 225, 25), (243, 195, 0), (250, 230, 60)),
    "green": ((0, 128, 0), (34, 139, 34), (44, 160, 44), (60, 180, 75), (50, 205, 50), (0, 136, 86)),
    "blue": ((0, 0, 255), (31, 119, 180), (65, 105, 225), (0, 130, 200), (30, 144, 255), (0, 103, 165)),
    "purple": ((128, 0, 128), (148, 103, 189), (145, 30, 180), (153, 50, 204), (135, 86, 146), (106, 27, 154)),
}
PAPERS = ((255, 255, 255), (255, 255, 240), (245, 245, 220), (211, 211, 211), (230, 230, 250), (240, 255, 240),
          (240, 248, 255), (250, 240, 230), (47, 79, 79), (40, 40, 48), (112, 128, 144))
SHAPE_NAMES = ("circle", "square", "triangle", "diamond", "cross")


@dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    cx: float  # centre, fraction of the side from the left
    cy: float  # centre, fraction of the side from the top
    radius: float  # fraction of the side
    turn: float  # radians
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Picture:
    things: tuple[Thing, ...]
    side: int
    paper: tuple[int, int, int]
    paper_to: tuple[int, int, int] | None  # vertical gradient to this colour
    outline: float  # line width in pixels, 0 = none
    seed: int


def _sdf(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (in units of the radius, < 0 inside) of points (u, v) to a shape of radius 1 at the origin."""
    if shape == "circle":
        return np.hypot(u, v) - 1.0
    if shape == "square":
        h = 1.0 / np.sqrt(2.0)
        return np.maximum(np.abs(u), np.abs(v)) - h
    if shape == "diamond":
        return (np.abs(u) + np.abs(v) - 1.0) / np.sqrt(2.0)
    if shape == "cross":
        arm, half = 0.33, 0.95
        bar = lambda a, b: np.maximum(np.abs(a) - half, np.abs(b) - arm)  # noqa: E731
        return np.minimum(bar(u, v), bar(v, u))
    # triangle, apex up: the largest of the distances to its three edges' lines
    normals = [(0.0, 1.0), (np.sqrt(3) / 2, -0.5), (-np.sqrt(3) / 2, -0.5)]  # outward, y down
    return np.max([nx * u + ny * v - 0.5 for nx, ny in normals], axis=0)


def draw(picture: Picture) -> Image.Image:
    """The picture as an RGB image of `picture.side` pixels a side."""
    n = picture.side
    rng = np.random.default_rng(picture.seed)
    ys, xs = np.mgrid[0:n, 0:n].astype(np.float64)
    xs, ys = (xs + 0.5) / n, (ys + 0.5) / n
    top = np.array(picture.paper, np.float64)
    bottom = np.array(picture.paper_to or picture.paper, np.float64)
    canvas = top + (bottom - top) * ys[..., None]
    pixel = 1.0 / n
    for t in picture.things:
        du, dv = (xs - t.cx) / t.radius, (ys - t.cy) / t.radius
        cos, sin = np.cos(-t.turn), np.sin(-t.turn)
        distance = _sdf(t.shape, du * cos - dv * sin, du * sin + dv * cos) * t.radius  # in fractions of the side
        inside = np.clip(0.5 - distance / pixel, 0.0, 1.0)[..., None]
        canvas = canvas * (1 - inside) + np.array(t.rgb, np.float64) * inside
        if picture.outline:
            ring = np.clip(picture.outline / 2 + 0.5 - np.abs(distance) / pixel, 0.0, 1.0)[..., None]
            canvas = canvas * (1 - ring) + np.array((25, 25, 25), np.float64) * ring
    canvas += rng.normal(0, 2.0, canvas.shape)
    return Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))


def lay_out(rng: np.random.Generator, count: int) -> list[tuple[str, str, float, float, float]] | None:
    """`count` distinct (shape, colour) pairs with a radius and a centre, apart from each other and from the
    borders, with clearly different left-to-right positions; None when the draw does not fit."""
    pairs = [(s, c) for s in SHAPE_NAMES for c in NAMED]
    chosen = rng.permutation(len(pairs))[:count]
    placed: list[tuple[str, str, float, float, float]] = []
    for index in chosen:
        shape, colour = pairs[index]
        for _ in range(200):
            radius = rng.uniform(0.07, 0.19)
            cx, cy = rng.uniform(radius + 0.02, 1 - radius - 0.02, size=2)
            if all(np.hypot(cx - x, cy - y) > radius + r + 0.03 and abs(cx - x) > 0.05 for _, _, r, x, y in placed):
                placed.append((shape, colour, float(radius), float(cx), float(cy)))
                break
        else:
            return None
    return placed


def random_picture(rng: np.random.Generator) -> Picture:
    """One to four things on a paper of a random tone; outlines on a third of the pictures."""
    count = int(rng.integers(1, 5))
    layout = None
    while layout is None:
        layout = lay_out(rng, count)
    things = tuple(Thing(shape, colour, cx, cy, radius, float(rng.uniform(-0.3, 0.3)),
                         NAMED[colour][int(rng.integers(len(NAMED[colour])))])
                   for shape, colour, radius, cx, cy in layout)
    paper = PAPERS[int(rng.integers(len(PAPERS)))]
    paper_to = PAPERS[int(rng.integers(len(PAPERS)))] if rng.random() < 0.25 else None
    outline = float(rng.uniform(1.0, 2.5)) if rng.random() < 1 / 3 else 0.0
    return Picture(things, int(rng.integers(64, 225)), paper, paper_to, outline, int(rng.integers(2**31)))
