"""Spec: the oracle's image tokens encode the inventory at every patch (and, local, what each patch shows); the
projector warm-up learns them and trains the projector only."""

import numpy as np
import torch

from cobra_app.demo.model_config import tiny_config
from cobra_app.demo.scenes import PAIRS, Scene, SceneObject
from cobra_app.demo.training.config import TrainConfig
from cobra_app.demo.training.inventory import INVENTORY_ROWS, OBJECT_ROWS, patch_inventory, scene_inventory
from cobra_app.demo.training.model_init import build_model
from cobra_app.demo.training.rendering import SceneRenderer
from cobra_app.demo.training.oracle import OracleTokens, warm_up_projector


def scenes() -> list[Scene]:
    circle = SceneObject("circle", "red", size=0.2, x=0.25, y=0.25)  # in the top-left patch of a 2 x 2 grid
    cross = SceneObject("cross", "blue", size=0.2, x=0.75, y=0.75)  # in the bottom-right one
    return [Scene((circle, cross), background=(245, 245, 245), texture=0.0, grain=0.0, noise_seed=0),
            Scene((circle,), background=(245, 245, 245), texture=0.0, grain=0.0, noise_seed=0)]


def test_oracle_tokens_encode_the_inventory_the_same_at_every_patch():
    oracle = OracleTokens(image_size=64, grid=2, d_model=8)
    tokens = oracle(scenes())  # [2 scenes, 4 patches, 8]
    assert tokens.shape == (2, 4, 8) and oracle.local is None
    assert torch.allclose(tokens - oracle.position, (tokens - oracle.position)[:, :1].expand(-1, 4, -1))
    assert not torch.allclose(tokens[0], tokens[1])


def test_oracle_tokens_without_places_read_presence_and_centres_only():
    oracle = OracleTokens(image_size=64, grid=2, d_model=8, places=False)
    inventories = torch.from_numpy(np.stack([scene_inventory(scene) for scene in scenes()]))  # [2, rows, pairs]
    assert oracle.inventory.in_features == OBJECT_ROWS * len(PAIRS) < INVENTORY_ROWS * len(PAIRS)
    expected = oracle.inventory(inventories[:, :OBJECT_ROWS].flatten(1))[:, None] + oracle.position
    assert torch.allclose(oracle(scenes()), expected)


def test_local_oracle_tokens_add_what_each_patch_shows():
    oracle = OracleTokens(image_size=64, grid=2, d_model=8, local=True)
    tokens = oracle(scenes())
    shows = torch.from_numpy(np.stack([patch_inventory(scene, 64, 2) for scene in scenes()]))  # [2, 4, 3, pairs]
    assert shows[0, :, 0].sum(-1).tolist() == [1, 0, 0, 1]  # the circle's patch, two background, the cross's
    whole = tokens - oracle.local(shows.flatten(2))  # what the plain oracle gives
    assert torch.allclose(whole - oracle.position, (whole - oracle.position)[:, :1].expand(-1, 4, -1), atol=1e-6)
    background = oracle.local.bias
    assert not torch.allclose(tokens[0, 0] - oracle.position[0], tokens[0, 1] - oracle.position[1])  # circle vs none
    assert torch.allclose(oracle.local(shows[0, 1].flatten()), background)


def test_projector_warm_up_learns_the_oracle_tokens_and_trains_the_projector_only(tokenizer):
    config = tiny_config(len(tokenizer))
    vlm = build_model(config, seed=0)
    oracle = OracleTokens(config.vision.image_size, config.vision.patch_grid, config.llm.d_model, local=True)
    before = {k: v.clone() for k, v in vlm.state_dict().items()}
    cfg = TrainConfig(projector_steps=30, vision_images=16, vision_lr=3e-3)
    log = warm_up_projector(vlm, oracle, cfg, SceneRenderer(vlm.image_transform), progress=False)
    losses = [e["loss"] for e in log]  # the tiny tower is random: only the per-patch part is readable from it
    assert len(log) == 30 and np.mean(losses[-5:]) < 0.95 * np.mean(losses[:5])
    changed = {k for k, v in vlm.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("projector.") for k in changed)
