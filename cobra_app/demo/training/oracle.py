"""The oracle stage's image tokens (perfect vision, discarded after training) and the projector warm-up that teaches
the projector to produce them from the frozen tower, so that the language model reads real images from the start."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from cobra_app.demo.scenes import PAIRS, Scene
from cobra_app.demo.training.config import TrainConfig
from cobra_app.demo.training.inventory import INVENTORY_ROWS, OBJECT_ROWS, patch_inventory, scene_inventory
from cobra_app.demo.training.model_init import EMBEDDING_INIT_STD
from cobra_app.demo.training.rendering import RenderScenes
from cobra_app.demo.training.schedule import Budget
from cobra_app.demo.training.vision_warm_up import PROJECTOR_STREAM, warm_up_scenes
from cobra_app.model.cobra import CobraVLM


class OracleTokens(nn.Module):
    """The oracle stage's image tokens (discarded after training): perfect vision. Scenes -> [S, P, d]: one linear map
    of the whole inventory [INVENTORY_ROWS, pairs] at every patch (without `places`, its object rows only: presence
    and centres, not the places from the left and the top), plus a learned embedding per patch, plus (`local`) a
    linear map of what the patch itself shows (`patch_inventory`, the pair and its centre)."""

    def __init__(self, image_size: int, grid: int, d_model: int, local: bool = False, places: bool = True) -> None:
        super().__init__()
        self.image_size, self.grid = image_size, grid
        self.rows = INVENTORY_ROWS if places else OBJECT_ROWS  # inventory rows the tokens read
        self.inventory = nn.Linear(self.rows * len(PAIRS), d_model)
        self.position = nn.Parameter(torch.randn(grid * grid, d_model) * EMBEDDING_INIT_STD)
        self.local = nn.Linear(OBJECT_ROWS * len(PAIRS), d_model) if local else None
        for linear in (self.inventory, self.local):
            if linear is not None:
                nn.init.normal_(linear.weight, std=EMBEDDING_INIT_STD)
                nn.init.zeros_(linear.bias)

    def forward(self, scenes: Sequence[Scene]) -> Tensor:
        """scenes (S of them) -> image tokens [S, P, d]."""
        inventories = np.stack([scene_inventory(scene)[: self.rows] for scene in scenes])  # [S, rows, pairs]
        tokens = self.inventory(torch.from_numpy(inventories).flatten(1))[:, None] + self.position  # [S, P, d]
        if self.local is None:
            return tokens
        shows = [patch_inventory(scene, self.image_size, self.grid) for scene in scenes]
        local = torch.from_numpy(np.stack(shows))  # [S, P, OBJECT_ROWS, pairs]
        return tokens + self.local(local.flatten(2))


def warm_up_projector(vlm: CobraVLM, oracle: OracleTokens, cfg: TrainConfig, render_scenes: RenderScenes,
                      progress: bool = True, budget: Budget | None = None) -> list[dict]:
    """Between the oracle stage and stage 2: the projector alone (the tower frozen) learns to output, from the real
    tower's features, the oracle's image tokens for the same scene (squared error relative to their variance), so
    that the language model trained on oracle tokens can read real images from the start of stage 2. Stops early
    when `budget` is spent."""
    optimizer = torch.optim.AdamW(vlm.projector.parameters(), lr=cfg.vision_lr, betas=cfg.betas)
    rng = np.random.default_rng([cfg.seed, PROJECTOR_STREAM])
    log = []
    for step in tqdm(range(cfg.projector_steps), disable=not progress, dynamic_ncols=True, desc="projector warm-up"):
        if budget is not None and budget.spent():
            break
        scenes, pixel_values = warm_up_scenes(rng, render_scenes, cfg.vision_images)
        with torch.no_grad():
            features = vlm.vision_backbone(pixel_values)  # [B, P, C]
            target = oracle(scenes)  # [B, P, d]
        loss = ((vlm.projector(features) - target) ** 2).mean() / target.var()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log.append({"projector_step": step + 1, "loss": round(loss.item(), 5)})
    return log
