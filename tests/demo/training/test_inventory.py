"""Spec: a scene's inventory lists each present (shape, colour) pair with its centre."""

import pytest

from cobra_app.demo.scenes import PAIRS, Scene, SceneObject
from cobra_app.demo.training.inventory import scene_inventory


def test_scene_inventory_lists_each_present_pair_with_its_centre():
    circle = SceneObject("circle", "red", size=0.1, x=0.25, y=0.4)
    cross = SceneObject("cross", "blue", size=0.1, x=0.75, y=0.6)
    scene = Scene((circle, cross), background=(245, 245, 245), texture=0.0, grain=0.0, noise_seed=0)
    inventory = scene_inventory(scene)  # [presence / x / y, pair]
    assert inventory.shape == (3, len(PAIRS)) and inventory[0].sum() == 2
    assert inventory[:, PAIRS.index(("circle", "red"))].tolist() == pytest.approx([1, 0.25, 0.4])
    assert inventory[:, PAIRS.index(("cross", "blue"))].tolist() == pytest.approx([1, 0.75, 0.6])
    assert not inventory[:, PAIRS.index(("cross", "red"))].any()
