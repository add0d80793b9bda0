"""The oracle stage's image tokens (perfect vision, discarded after training) and the projector warm-up that teaches
the projector to produce them from the frozen tower, so that the language model reads real images from the start."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from cobra_app.demo.scenes import PAIRS
from cobra_app.demo.training.config import TrainConfig
from cobra_app.demo.training.inventory import INVENTORY_ROWS, scene_inventory
from cobra_app.demo.training.model_init import EMBEDDING_INIT_STD
from cobra_app.demo.training.schedule import Budget
from cobra_app.demo.training.vision_warm_up import PROJECTOR_STREAM, warm_up_scenes
from cobra_app.model.cobra import CobraVLM


class OracleTokens(nn.Module):
    """The oracle stage's image tokens (discarded after training): perfect vision. Each scene's inventory
    [INVENTORY_ROWS, pairs] -> [P, d]: one linear map of the whole inventory at every patch, plus a learned embedding
    per patch."""

    def __init__(self, num_patches: int, d_model: int) -> None:
        super().__init__()
        self.inventory = nn.Linear(INVENTORY_ROWS * len(PAIRS), d_model)
        self.position = nn.Parameter(torch.randn(num_patches, d_model) * EMBEDDING_INIT_STD)
        nn.init.normal_(self.inventory.weight, std=EMBEDDING_INIT_STD)
        nn.init.zeros_(self.inventory.bias)

    def forward(self, inventories: Tensor) -> Tensor:
        """inventories [S, INVENTORY_ROWS, pairs] -> image tokens [S, P, d]."""
        return self.inventory(inventories.flatten(1))[:, None] + self.position


def warm_up_projector(vlm: CobraVLM, oracle: OracleTokens, cfg: TrainConfig, progress: bool = True,
                      budget: Budget | None = None) -> list[dict]:
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
        scenes, pixel_values = warm_up_scenes(rng, vlm, cfg.vision_images)
        with torch.no_grad():
            features = vlm.vision_backbone(pixel_values)  # [B, P, C]
            target = oracle(torch.from_numpy(np.stack([scene_inventory(scene) for scene in scenes])))  # [B, P, d]
        loss = ((vlm.projector(features) - target) ** 2).mean() / target.var()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log.append({"projector_step": step + 1, "loss": round(loss.item(), 5)})
    return log
