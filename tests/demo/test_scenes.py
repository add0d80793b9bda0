"""Spec: the synthetic scene world is seed-deterministic, well separated, and renders what it describes."""

import dataclasses
import itertools

import numpy as np
import pytest

from cobra_app.demo.scenes import (
    BACKGROUNDS,
    COLOURS,
    EDGE_MARGIN,
    OBJECT_GAP,
    ORDER_GAP,
    RELATION_MARGIN,
    SHAPES,
    Scene,
    relation_holds,
    render,
    sample_scene,
)


def scenes(seed: int, n: int) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [sample_scene(rng) for _ in range(n)]


def test_vocabulary():
    assert list(SHAPES) == ["circle", "square", "triangle", "diamond", "cross"]
    assert list(COLOURS) == ["red", "orange", "yellow", "green", "blue", "purple"]


def test_sampling_is_deterministic_by_seed():
    assert scenes(3, 20) == scenes(3, 20)
    assert scenes(3, 20) != scenes(4, 20)


def test_layout_constraints():
    for scene in scenes(0, 400):
        objs = scene.objects
        assert 1 <= len(objs) <= 4
        assert len({(o.shape, o.colour) for o in objs}) == len(objs)  # "the red circle" is always unique
        for o in objs:
            assert o.shape in SHAPES and o.colour in COLOURS
            assert EDGE_MARGIN + o.size <= min(o.x, o.y) and max(o.x, o.y) <= 1 - EDGE_MARGIN - o.size
        for a, b in itertools.combinations(objs, 2):
            assert np.hypot(a.x - b.x, a.y - b.y) > a.size + b.size + OBJECT_GAP
            assert abs(a.x - b.x) >= ORDER_GAP
        assert scene.background in BACKGROUNDS


def test_scene_statistics_cover_the_world():
    sample = scenes(1, 2000)
    assert {len(s.objects) for s in sample} == {1, 2, 3, 4}
    assert {(o.shape, o.colour) for s in sample for o in s.objects} == set(itertools.product(SHAPES, COLOURS))
    assert 0.3 < np.mean([s.grain > 0 for s in sample]) < 0.7
    assert 0.3 < np.mean([s.texture > 0 for s in sample]) < 0.7


def test_relations_follow_centres_with_margin():
    checked = 0
    for scene in scenes(2, 300):
        for a, b in itertools.permutations(scene.objects, 2):
            dx, dy = b.x - a.x, b.y - a.y  # image coordinates: y grows downwards
            expected = {"left of": dx, "right of": -dx, "above": dy, "below": -dy}
            for relation, delta in expected.items():
                holds = relation_holds(a, b, relation)
                assert holds == (None if abs(delta) <= RELATION_MARGIN else delta > 0)
                checked += holds is not None
    assert checked > 500


def test_render_is_deterministic_rgb_of_requested_size():
    scene = scenes(5, 1)[0]
    image = render(scene)
    assert image.mode == "RGB" and image.size == (64, 64)
    assert np.array_equal(np.asarray(image), np.asarray(render(scene)))
    assert render(scene, size=32).size == (32, 32)


@pytest.mark.parametrize("noisy", [False, True])
def test_render_shows_object_colours_at_centres_and_background_elsewhere(noisy: bool):
    tolerance = 30 if noisy else 1
    for scene in scenes(6, 50):
        if not noisy:
            scene = dataclasses.replace(scene, texture=0.0, grain=0.0)
        pixels = np.asarray(render(scene), np.int32)
        for o in scene.objects:
            centre = pixels[int(o.y * 64), int(o.x * 64)]
            assert np.abs(centre - COLOURS[o.colour]).max() <= tolerance, (o, centre)
        covered = np.zeros((64, 64), bool)
        yy, xx = (np.mgrid[0:64, 0:64] + 0.5) / 64
        for o in scene.objects:
            covered |= np.hypot(xx - o.x, yy - o.y) < o.size + 1.5 / 64
        deviation = np.abs(pixels[~covered] - scene.background)
        assert (deviation.mean() < 12) if noisy else (deviation.max() == 0)
