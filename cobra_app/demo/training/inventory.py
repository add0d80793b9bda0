"""A scene as one target (which of the (shape, colour) pairs are present, where, and in which place from the left and
from the top), read by every warm-up head and the oracle; and what each image patch shows of it."""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from cobra_app.demo.scenes import MAX_OBJECTS, PAIRS, Scene, object_map

# inventory rows: presence, x, y (the object rows), then the one-hot place from the left, then from the top
OBJECT_ROWS = 3
LEFT_RANK = slice(OBJECT_ROWS, OBJECT_ROWS + MAX_OBJECTS)
TOP_RANK = slice(LEFT_RANK.stop, LEFT_RANK.stop + MAX_OBJECTS)
INVENTORY_ROWS = TOP_RANK.stop


def scene_inventory(scene: Scene) -> np.ndarray:
    """The whole scene as one target [INVENTORY_ROWS, len(PAIRS)]: presence of each (shape, colour) pair, its centre
    x, y, its place in the left-to-right order (one-hot; the order descriptions name the objects in) and in the
    top-to-bottom order (one-hot; y grows downwards). Both orders give spatial relations a discrete read-out: with
    the place from the left alone, models learned "left of" but not "above" (docs/DEMO_MODEL.md, session 13)."""
    inventory = np.zeros((INVENTORY_ROWS, len(PAIRS)), dtype=np.float32)
    for place, o in enumerate(scene.left_to_right()):
        k = PAIRS.index((o.shape, o.colour))
        inventory[:OBJECT_ROWS, k] = (1.0, o.x, o.y)
        inventory[LEFT_RANK.start + place, k] = 1.0
    for place, o in enumerate(sorted(scene.objects, key=lambda o: o.y)):
        inventory[TOP_RANK.start + place, PAIRS.index((o.shape, o.colour))] = 1.0
    return inventory


def patch_owners(scene: Scene, image_size: int, grid: int) -> np.ndarray:
    """[grid²] row-major like the ViT's patch tokens: 1 + the index (in `scene.objects`) of the object covering most
    pixels of each patch, 0 where none covers any."""
    patch = image_size // grid
    owners = object_map(scene, image_size).reshape(grid, patch, grid, patch).transpose(0, 2, 1, 3)
    owners = owners.reshape(grid * grid, patch * patch)  # [P, pixels] object index + 1 (0 = background)
    counts = np.stack([(owners == k + 1).sum(1) for k in range(len(scene.objects))], 1)  # [P, objects]
    return np.where(counts.max(1) > 0, counts.argmax(1) + 1, 0)


def patch_centres(grid: int) -> np.ndarray:
    """[grid², 2] (x, y) of each patch's centre, in units of the image side, row-major."""
    index = np.arange(grid * grid)
    return np.stack([(index % grid + 0.5) / grid, (index // grid + 0.5) / grid], 1)


def patch_inventory(scene: Scene, image_size: int, grid: int) -> np.ndarray:
    """What each patch shows, as `scene_inventory`'s object rows restricted to that patch's object (`patch_owners`):
    [grid², OBJECT_ROWS, len(PAIRS)] with presence 1, x, y in its pair's column; zeros on background. Unlike the
    places from the left and the top, this is readable from the patch and its surroundings alone."""
    local = np.zeros((grid * grid, OBJECT_ROWS, len(PAIRS)), dtype=np.float32)
    for p, owner in enumerate(patch_owners(scene, image_size, grid)):
        if owner:
            o = scene.objects[owner - 1]
            local[p, :, PAIRS.index((o.shape, o.colour))] = (1.0, o.x, o.y)
    return local


def object_errors(predicted: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """predicted [..., 3] (presence logit, x, y), target [..., 3] (present 0/1, x, y) -> (presence binary
    cross-entropy [...], squared centre error [...], 0 where the object is absent)."""
    present = target[..., 0]
    presence = F.binary_cross_entropy_with_logits(predicted[..., 0], present, reduction="none")
    where = ((predicted[..., 1:3] - target[..., 1:3]) ** 2).sum(-1) * present
    return presence, where


def rank_errors(predicted: Tensor, target: Tensor) -> Tensor:
    """predicted [..., INVENTORY_ROWS] (the rank rows: logits of the places), target [..., INVENTORY_ROWS] -> summed
    cross-entropy of the place from the left and from the top [...], 0 where the object is absent."""
    present = target[..., 0]
    errors = sum(F.cross_entropy(predicted[..., rank].flatten(0, -2), target[..., rank].argmax(-1).flatten(),
                                 reduction="none") for rank in (LEFT_RANK, TOP_RANK))
    return errors.view_as(present) * present
