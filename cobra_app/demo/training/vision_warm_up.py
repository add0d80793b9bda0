"""Stage 1, the vision warm-up: the towers, which start from scratch where the release's start from pretrained DINOv2
and SigLIP, learn alone (through linear heads, then discarded) to name the shape and colour under each patch (and,
optionally, where its object's centre is) and, at every patch, the whole scene (`scene_inventory`)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from cobra_app.demo.scenes import COLOURS, PAIRS, SHAPES, Scene, sample_training_scene
from cobra_app.demo.training.config import TrainConfig
from cobra_app.demo.training.inventory import (
    INVENTORY_ROWS,
    object_errors,
    patch_centres,
    patch_owners,
    rank_errors,
    scene_inventory,
)
from cobra_app.demo.training.rendering import RenderScenes
from cobra_app.demo.training.schedule import Budget, lr_at
from cobra_app.model.cobra import CobraVLM

SHAPE_CLASSES = ("background", *SHAPES)  # per-patch targets of the vision warm-up
COLOUR_CLASSES = ("background", *COLOURS)
VISION_STREAM, PROJECTOR_STREAM = 2, 3  # seed-sequence keys of the warm-ups' scenes (stage 2 draws from TRAIN_STREAM)


def patch_targets(scene: Scene, image_size: int, grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-patch labels, row-major like the ViT's patch tokens: (shape class [grid²], colour class [grid²]) of the
    object covering most pixels of each patch (indices into SHAPE_CLASSES / COLOUR_CLASSES; 0 = background), and that
    object's centre minus the patch centre [grid², 2] (x, y in units of the side; 0 on background)."""
    owner = patch_owners(scene, image_size, grid)  # [P]
    shape_of = np.array([0] + [SHAPE_CLASSES.index(o.shape) for o in scene.objects])
    colour_of = np.array([0] + [COLOUR_CLASSES.index(o.colour) for o in scene.objects])
    centre_of = np.array([(0.0, 0.0)] + [(o.x, o.y) for o in scene.objects], dtype=np.float32)  # [objects + 1, 2]
    offsets = np.where(owner[:, None] > 0, centre_of[owner] - patch_centres(grid), 0.0).astype(np.float32)
    return shape_of[owner], colour_of[owner], offsets


class WarmUpHead(nn.Module):
    """Linear read-outs of the vision warm-up (discarded afterwards), applied to every patch: the shape and colour
    under the patch, the scene's whole inventory (which pairs are present, where, and their order from the left and
    from the top), and with `local_weight` > 0 the centre of the patch's own object as an offset from the patch
    centre (a local target: it places objects three times more precisely than the inventory, docs/DEMO_MODEL.md)."""

    def __init__(self, embed_dim: int, local_weight: float = 0.0) -> None:
        super().__init__()
        self.patch = nn.Linear(embed_dim, len(SHAPE_CLASSES) + len(COLOUR_CLASSES))
        self.inventory = nn.Linear(embed_dim, INVENTORY_ROWS * len(PAIRS))
        self.local = nn.Linear(embed_dim, 2) if local_weight else None
        self.local_weight = local_weight

    def loss(self, features: Tensor, shapes: Tensor, colours: Tensor, inventory: Tensor, offsets: Tensor) -> Tensor:
        """features [B, P, C]; shapes, colours [B, P] class indices; inventory [B, INVENTORY_ROWS, len(PAIRS)];
        offsets [B, P, 2] -> summed losses (cross-entropies, presence binary cross-entropy, squared error of present
        pairs' centres, cross-entropies of their places from the left and the top, `local_weight` x the squared
        error of the offsets over the patches an object covers)."""
        shape_logits, colour_logits = self.patch(features).split([len(SHAPE_CLASSES), len(COLOUR_CLASSES)], dim=-1)
        predicted = self.inventory(features).unflatten(-1, (INVENTORY_ROWS, len(PAIRS))).transpose(-1, -2)
        target = inventory.transpose(-1, -2)[:, None].expand_as(predicted)  # [B, P, pairs, INVENTORY_ROWS]
        presence, where = object_errors(predicted, target)
        places = rank_errors(predicted, target)
        per_object = inventory[:, None, 0].sum(-1)  # [B, 1] objects in each scene
        loss = (F.cross_entropy(shape_logits.flatten(0, 1), shapes.flatten())
                + F.cross_entropy(colour_logits.flatten(0, 1), colours.flatten())
                + presence.mean() * len(PAIRS) / 4
                + 10 * (where.sum(-1) / per_object).mean()
                + (places.sum(-1) / per_object).mean())
        if self.local is None:
            return loss
        covered = (shapes > 0).float()  # [B, P] patches an object covers
        local = ((self.local(features) - offsets) ** 2).sum(-1)  # [B, P]
        return loss + self.local_weight * (local * covered).sum() / covered.sum().clamp(min=1)


def warm_up_scenes(rng: np.random.Generator, render_scenes: RenderScenes, n: int
                   ) -> tuple[list[Scene], dict[str, Tensor]]:
    """n fresh training scenes (`sample_training_scene`) and their pixel values (`render_scenes`, a `SceneRenderer`)."""
    scenes = [sample_training_scene(rng) for _ in range(n)]
    return scenes, render_scenes(scenes)


def warm_up_vision(vlm: CobraVLM, cfg: TrainConfig, render_scenes: RenderScenes, progress: bool = True,
                   budget: Budget | None = None) -> list[dict]:
    """Stage 1: train the vision tower alone to name the shape and colour under each patch and the scene's inventory
    (`WarmUpHead` on every patch), the stand-in for the release's pretrained DINOv2 / SigLIP. Only the tower's weights
    change. Stops early when `budget` is spent. Returns the loss log."""
    vision, image_size, grid = vlm.vision_backbone, vlm.config.vision.image_size, vlm.config.vision.patch_grid
    head = WarmUpHead(vision.embed_dim, cfg.local_weight)
    params = [*vision.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.vision_lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng([cfg.seed, VISION_STREAM])
    schedule = TrainConfig(lr=cfg.vision_lr, warmup_steps=min(50, cfg.vision_steps), min_lr_ratio=cfg.min_lr_ratio)
    log = []
    for step in tqdm(range(cfg.vision_steps), disable=not progress, dynamic_ncols=True, desc="vision warm-up"):
        if budget is not None and budget.spent():
            break
        cosine_progress = (step - schedule.warmup_steps) / max(cfg.vision_steps - schedule.warmup_steps, 1)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(schedule, step, cosine_progress)
        scenes, pixel_values = warm_up_scenes(rng, render_scenes, cfg.vision_images)
        targets = [patch_targets(scene, image_size, grid) for scene in scenes]
        shapes, colours, offsets = (torch.from_numpy(np.stack(t)) for t in zip(*targets))  # [B, P], [B, P], [B, P, 2]
        inventory = torch.from_numpy(np.stack([scene_inventory(scene) for scene in scenes]))  # [B, rows, pairs]
        loss = head.loss(vision(pixel_values), shapes, colours, inventory, offsets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        log.append({"vision_step": step + 1, "loss": round(loss.item(), 5)})
    return log
