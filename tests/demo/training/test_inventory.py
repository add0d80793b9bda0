"""Spec: a scene's inventory lists each present (shape, colour) pair with its centre and its places from the left and
from the top; each patch shows the pair of the object covering most of it, with that object's centre."""

import pytest
import torch

from cobra_app.demo.scenes import PAIRS, Scene, SceneObject
from cobra_app.demo.training.inventory import (
    INVENTORY_ROWS,
    LEFT_RANK,
    TOP_RANK,
    patch_centres,
    patch_inventory,
    patch_owners,
    rank_errors,
    scene_inventory,
)


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


def two_object_scene() -> Scene:
    circle = SceneObject("circle", "red", size=0.2, x=0.25, y=0.25)  # centred in the top-left quadrant
    cross = SceneObject("cross", "blue", size=0.2, x=0.7, y=0.75)  # most of the bottom-right quadrant
    return Scene((circle, cross), background=(245, 245, 245), texture=0.0, grain=0.0, noise_seed=0)


def test_each_patch_is_owned_by_the_object_covering_most_of_it():
    owners = patch_owners(two_object_scene(), image_size=64, grid=4)  # 16-pixel patches, row-major
    assert owners.shape == (16,)
    assert owners[[0, 1, 4, 5]].tolist() == [1, 1, 1, 1]  # the circle (object 0) around (0.25, 0.25)
    assert owners[[10, 14, 15]].tolist() == [2, 2, 2]  # the cross
    assert owners[[3, 12]].tolist() == [0, 0]  # top-right and bottom-left corners: background


def test_patch_centres_are_row_major_in_units_of_the_side():
    centres = patch_centres(grid=4)
    assert centres[0].tolist() == [0.125, 0.125] and centres[1].tolist() == [0.375, 0.125]
    assert centres[4].tolist() == [0.125, 0.375] and centres[15].tolist() == [0.875, 0.875]


def test_a_patch_inventory_holds_only_the_pair_the_patch_shows_with_its_centre():
    scene = two_object_scene()
    local = patch_inventory(scene, image_size=64, grid=4)  # [P, presence / x / y, pair]
    red_circle, blue_cross = PAIRS.index(("circle", "red")), PAIRS.index(("cross", "blue"))
    assert local.shape == (16, 3, len(PAIRS))
    assert local[5, :, red_circle].tolist() == pytest.approx([1, 0.25, 0.25])
    assert local[15, :, blue_cross].tolist() == pytest.approx([1, 0.7, 0.75])
    assert (local[:, 0].sum(-1) == (patch_owners(scene, 64, 4) > 0)).all()  # one pair per covered patch, none else
    assert not local[3].any()
    # what the whole scene's inventory says of each pair, restricted to the patches that show it
    assert local[5] == pytest.approx(scene_inventory(scene)[:3] * (local[5, 0] > 0))
