"""SceneRenderer: the same pixel values from worker processes as from this one."""

import multiprocessing

import numpy as np
import torch

from cobra_app.demo.model_config import tiny_config
from cobra_app.demo.scenes import render, sample_training_scene
from cobra_app.demo.training.model_init import build_model
from cobra_app.demo.training.rendering import SceneRenderer


def test_workers_give_exactly_the_pixels_of_rendering_here(tokenizer):
    vlm = build_model(tiny_config(len(tokenizer)), seed=0)
    rng = np.random.default_rng(5)
    scenes = [sample_training_scene(rng) for _ in range(13)]  # not a multiple of the shares: uneven splits
    expected = {name: torch.stack([vlm.image_transform(render(s))[name] for s in scenes])
                for name in vlm.image_transform(render(scenes[0]))}
    with SceneRenderer(vlm.image_transform, workers=2) as in_workers:
        assert in_workers.workers == 2
        for start, stop in ((0, 13), (0, 1), (3, 5)):
            got = in_workers(scenes[start:stop])
            assert got.keys() == expected.keys()
            for name, values in got.items():
                assert values.dtype == torch.float32 and torch.equal(values, expected[name][start:stop]), name
    assert SceneRenderer(vlm.image_transform, workers=1).workers == 0  # one worker would only add the transfer


def test_where_processes_cannot_fork_it_renders_in_process(tokenizer, monkeypatch):
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])  # as on Windows
    vlm = build_model(tiny_config(len(tokenizer)), seed=0)
    rng = np.random.default_rng(6)
    scenes = [sample_training_scene(rng) for _ in range(3)]
    with SceneRenderer(vlm.image_transform, workers=2) as renderer:
        assert renderer.workers == 0 and all(v.shape[0] == 3 for v in renderer(scenes).values())


def test_closing_stops_the_workers(tokenizer):
    vlm = build_model(tiny_config(len(tokenizer)), seed=0)
    before = set(multiprocessing.active_children())
    renderer = SceneRenderer(vlm.image_transform, workers=2)
    workers = set(multiprocessing.active_children()) - before
    assert len(workers) == 2
    renderer.close()
    assert not any(p.is_alive() for p in workers)
