"""A scene as one target (which of the (shape, colour) pairs are present, where, and in which place from the left),
read by every warm-up head and the oracle."""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from cobra_app.demo.scenes import MAX_OBJECTS, PAIRS, Scene

RANK = slice(3, 3 + MAX_OBJECTS)  # inventory rows: presence, x, y, then the one-hot place from the left
INVENTORY_ROWS = RANK.stop


def scene_inventory(scene: Scene) -> np.ndarray:
    """The whole scene as one target [INVENTORY_ROWS, len(PAIRS)]: presence of each (shape, colour) pair, its centre
    x, y, and its place in the left-to-right order (one-hot; the order descriptions name the objects in)."""
    inventory = np.zeros((INVENTORY_ROWS, len(PAIRS)), dtype=np.float32)
    for place, o in enumerate(scene.left_to_right()):
        k = PAIRS.index((o.shape, o.colour))
        inventory[:3, k] = (1.0, o.x, o.y)
        inventory[RANK.start + place, k] = 1.0
    return inventory


def object_errors(predicted: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """predicted [..., 3] (presence logit, x, y), target [..., 3] (present 0/1, x, y) -> (presence binary
    cross-entropy [...], squared centre error [...], 0 where the object is absent)."""
    present = target[..., 0]
    presence = F.binary_cross_entropy_with_logits(predicted[..., 0], present, reduction="none")
    where = ((predicted[..., 1:3] - target[..., 1:3]) ** 2).sum(-1) * present
    return presence, where


def rank_errors(predicted: Tensor, target: Tensor) -> Tensor:
    """predicted [..., MAX_OBJECTS] logits of the place from the left, target [..., INVENTORY_ROWS] -> cross-entropy
    [...], 0 where the object is absent."""
    present = target[..., 0]
    place = target[..., RANK].argmax(-1)
    return F.cross_entropy(predicted.flatten(0, -2), place.flatten(), reduction="none").view_as(present) * present
