"""Spec: the vision warm-up names the object under each patch (and, with a local weight, where its centre is) and the
scene's inventory, and trains the tower only."""

import numpy as np
import pytest
import torch

from cobra_app.demo.model_config import tiny_config
from cobra_app.demo.scenes import PAIRS, Scene, SceneObject
from cobra_app.demo.training.config import TrainConfig
from cobra_app.demo.training.inventory import INVENTORY_ROWS, LEFT_RANK, TOP_RANK
from cobra_app.demo.training.model_init import build_model
from cobra_app.demo.training.rendering import SceneRenderer
from cobra_app.demo.training.vision_warm_up import (
    COLOUR_CLASSES,
    SHAPE_CLASSES,
    WarmUpHead,
    patch_targets,
    warm_up_vision,
)


def test_patch_targets_name_the_object_under_each_patch():
    circle = SceneObject("circle", "red", size=0.2, x=0.25, y=0.25)  # centred in the top-left quadrant
    cross = SceneObject("cross", "blue", size=0.2, x=0.75, y=0.75)
    scene = Scene((circle, cross), background=(245, 245, 245), texture=0.0, grain=0.0, noise_seed=0)
    shapes, colours, offsets = patch_targets(scene, image_size=64, grid=4)  # 16-pixel patches, row-major
    names = [SHAPE_CLASSES[s] for s in shapes]
    assert names[0] == names[5] == "circle" and names[15] == names[10] == "cross"
    assert names[3] == names[12] == "background"
    assert [COLOUR_CLASSES[c] for c in colours[[0, 5, 10, 15, 3]]] == ["red", "red", "blue", "blue", "background"]
    assert ((shapes == 0) == (colours == 0)).all()
    # the object's centre from the patch centre, in units of the side: patch 0's centre is (0.125, 0.125)
    assert offsets.shape == (16, 2)
    assert offsets[0].tolist() == pytest.approx([0.125, 0.125]) and offsets[5].tolist() == pytest.approx([-0.125, -0.125])
    assert offsets[15].tolist() == pytest.approx([-0.125, -0.125]) and not offsets[shapes == 0].any()


def test_warm_up_inventory_loss_scores_the_centres_and_places_of_present_pairs_only():
    torch.manual_seed(0)
    head = WarmUpHead(embed_dim=8)
    features, shapes, colours = torch.randn(1, 4, 8), torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)
    inventory = torch.zeros(1, INVENTORY_ROWS, len(PAIRS))
    inventory[0, :4, 3] = torch.tensor([1.0, 0.2, 0.7, 1.0])  # one present pair, first from the left
    inventory[0, TOP_RANK.start, 3] = 1.0  # and from the top
    offsets = torch.zeros(1, 4, 2)
    base = head.loss(features, shapes, colours, inventory, offsets)
    for row, scored in ((1, False), (LEFT_RANK.start + 1, False), (TOP_RANK.start + 1, False), (1, True),
                        (LEFT_RANK.start + 1, True), (TOP_RANK.start + 1, True)):
        pair = 3 if scored else 5  # the present pair, or an absent one
        with torch.no_grad():
            head.inventory.bias[row * len(PAIRS) + pair] += 1.0  # its x, or its place logit
        assert (head.loss(features, shapes, colours, inventory, offsets) != base) == scored, (row, pair)
        base = head.loss(features, shapes, colours, inventory, offsets)


def test_the_local_term_scores_the_offsets_of_covered_patches_only_and_is_absent_by_default():
    assert WarmUpHead(embed_dim=8).local is None  # the shipped recipe: no local head, no local loss
    torch.manual_seed(0)
    head = WarmUpHead(embed_dim=8, local_weight=10.0)
    features, colours = torch.randn(1, 4, 8), torch.tensor([[0, 2, 0, 1]])
    shapes = colours.clone()  # patches 1 and 3 show an object, 0 and 2 background
    inventory = torch.zeros(1, INVENTORY_ROWS, len(PAIRS))
    inventory[0, :4, 3] = torch.tensor([1.0, 0.2, 0.7, 1.0])  # one present pair, first from the left
    inventory[0, TOP_RANK.start, 3] = 1.0  # and from the top
    predicted = head.local(features)  # [1, 4, 2]
    without = head.loss(features, shapes, colours, inventory, predicted.detach())  # the offsets exactly predicted
    for patch, scored in ((0, False), (2, False), (1, True), (3, True)):
        offsets = predicted.detach().clone()
        offsets[0, patch, 0] += 0.1
        expected = 10.0 * 0.1**2 / 2 if scored else 0.0  # mean over the two covered patches
        assert head.loss(features, shapes, colours, inventory, offsets).item() == pytest.approx(
            without.item() + expected, abs=1e-5), patch


def test_vision_warm_up_learns_and_trains_the_tower_only(tokenizer):
    vlm = build_model(tiny_config(len(tokenizer)), seed=0)
    before = {k: v.clone() for k, v in vlm.state_dict().items()}
    cfg = TrainConfig(vision_steps=30, vision_images=16, vision_lr=3e-3, local_weight=10.0)
    log = warm_up_vision(vlm, cfg, SceneRenderer(vlm.image_transform), progress=False)
    assert len(log) == 30 and np.mean([e["loss"] for e in log[-5:]]) < 0.7 * log[0]["loss"]
    changed = {k for k, v in vlm.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("vision_backbone.") for k in changed)
