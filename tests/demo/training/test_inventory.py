"""Spec: a scene's inventory lists each present (shape, colour) pair with its centre and its places from the left and
from the top."""

import pytest
import torch

from cobra_app.demo.scenes import PAIRS, Scene, SceneObject
from cobra_app.demo.training.inventory import INVENTORY_ROWS, LEFT_RANK, TOP_RANK, rank_errors, scene_inventory


def test_scene_inventory_lists_each_present_pair_with_its_centre_and_places():
    circle = SceneObject("circle", "red", size=0.1, x=0.25, y=0.4)
    cross = SceneObject("cross", "blue", size=0.1, x=0.75, y=0.6)
    square = SceneObject("square", "green", size=0.1, x=0.5, y=0.1)
    scene = Scene((cross, circle, square), background=(245, 245, 245), texture=0.0, grain=0.0, noise_seed=0)
    inventory = scene_inventory(scene)  # [presence / x / y / place from the left / place from the top, pair]
    assert inventory.shape == (INVENTORY_ROWS, len(PAIRS)) and inventory[0].sum() == 3
    assert inventory[:3, PAIRS.index(("circle", "red"))].tolist() == pytest.approx([1, 0.25, 0.4])
    assert inventory[:3, PAIRS.index(("cross", "blue"))].tolist() == pytest.approx([1, 0.75, 0.6])
    assert inventory[LEFT_RANK, PAIRS.index(("circle", "red"))].tolist() == [1, 0, 0, 0]  # leftmost
    assert inventory[LEFT_RANK, PAIRS.index(("square", "green"))].tolist() == [0, 1, 0, 0]
    assert inventory[LEFT_RANK, PAIRS.index(("cross", "blue"))].tolist() == [0, 0, 1, 0]
    assert inventory[TOP_RANK, PAIRS.index(("square", "green"))].tolist() == [1, 0, 0, 0]  # topmost (y grows down)
    assert inventory[TOP_RANK, PAIRS.index(("circle", "red"))].tolist() == [0, 1, 0, 0]
    assert inventory[TOP_RANK, PAIRS.index(("cross", "blue"))].tolist() == [0, 0, 1, 0]
    assert not inventory[:, PAIRS.index(("cross", "red"))].any()


def test_place_errors_count_present_objects_only():
    inventory = torch.from_numpy(scene_inventory(Scene(
        (SceneObject("circle", "red", size=0.1, x=0.25, y=0.4),), background=(245, 245, 245), texture=0.0,
        grain=0.0, noise_seed=0))).T  # [pairs, rows]
    logits = torch.zeros(len(PAIRS), INVENTORY_ROWS)
    errors = rank_errors(logits, inventory)  # uniform over 4 places, from the left and from the top
    assert errors[PAIRS.index(("circle", "red"))] == pytest.approx(2 * torch.log(torch.tensor(4.0)).item())
    assert errors.sum() == errors[PAIRS.index(("circle", "red"))]
