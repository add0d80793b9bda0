"""A scene as one target (which of the (shape, colour) pairs are present, and where), read by every warm-up head."""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from cobra_app.demo.scenes import PAIRS, Scene


def scene_inventory(scene: Scene) -> np.ndarray:
    """The whole scene as one target [3, len(PAIRS)]: presence of each (shape, colour) pair, and its centre x, y."""
    inventory = np.zeros((3, len(PAIRS)), dtype=np.float32)
    for o in scene.objects:
        k = PAIRS.index((o.shape, o.colour))
        inventory[:, k] = (1.0, o.x, o.y)
    return inventory


def object_errors(predicted: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """predicted [..., 3] (presence logit, x, y), target [..., 3] (present 0/1, x, y) -> (presence binary
    cross-entropy [...], squared centre error [...], 0 where the object is absent)."""
    present = target[..., 0]
    presence = F.binary_cross_entropy_with_logits(predicted[..., 0], present, reduction="none")
    where = ((predicted[..., 1:] - target[..., 1:]) ** 2).sum(-1) * present
    return presence, where
