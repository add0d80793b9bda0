"""Scenes -> the towers' pixel values, rendered in worker processes while the training step waits for them.

Rendering is a pure function of a scene (`scenes.render`, then the model's own `image_transform`), so where it runs
changes no value: a step gets the same tensors from `workers` forked processes as from this one. It pays because a
step's data and its compute alternate: while the scenes render, the step's threads wait, so the workers have the
cores to themselves (a worker rendering *during* the compute took the cores from it and made runs slower,
docs/DEMO_MODEL.md session 18).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from cobra_app.demo.scenes import Scene, render

ImageTransform = Callable[..., dict[str, Tensor]]  # PIL image -> {tower name: [3, H, W] float32}
RenderScenes = Callable[[Sequence[Scene]], dict[str, Tensor]]  # scenes -> {tower name: [S, 3, H, W] float32}

_worker_transform: ImageTransform | None = None  # set in each worker by `_start_worker`


def _start_worker(image_transform: ImageTransform) -> None:
    global _worker_transform
    _worker_transform = image_transform
    torch.set_num_threads(1)  # the workers share the cores between them


def _pixels_of(scenes: Sequence[Scene], image_transform: ImageTransform) -> dict[str, np.ndarray]:
    """scenes -> {tower name: [S, 3, H, W] float32}, rendered and transformed one by one, as at inference."""
    pixels = [image_transform(render(scene)) for scene in scenes]
    return {name: np.stack([p[name].numpy() for p in pixels]) for name in pixels[0]}


def _render_in_worker(scenes: Sequence[Scene]) -> dict[str, np.ndarray]:
    assert _worker_transform is not None, "the worker was started without an image transform"
    return _pixels_of(scenes, _worker_transform)


class SceneRenderer:
    """Callable: scenes -> {tower name: [S, 3, H, W] float32 tensor}, the same values whatever `workers` is.

    With `workers` > 1 the scenes are split into shares (four a worker, for balance) rendered by that many forked
    processes (one torch thread each); with 0 or 1, or where processes cannot fork (Windows), in this process. Use as
    a context manager to stop the workers."""

    def __init__(self, image_transform: ImageTransform, workers: int = 0) -> None:
        self.image_transform = image_transform
        self.workers = workers if workers > 1 and "fork" in multiprocessing.get_all_start_methods() else 0
        self._pool = (multiprocessing.get_context("fork").Pool(self.workers, _start_worker, (image_transform,))
                      if self.workers else None)

    def __call__(self, scenes: Sequence[Scene]) -> dict[str, Tensor]:
        if self._pool is None or len(scenes) < 2:
            parts = [_pixels_of(scenes, self.image_transform)]
        else:
            shares = min(4 * self.workers, len(scenes))
            bounds = np.linspace(0, len(scenes), shares + 1).round().astype(int)
            parts = self._pool.map(_render_in_worker, [scenes[a:b] for a, b in zip(bounds[:-1], bounds[1:])], 1)
        return {name: torch.from_numpy(np.concatenate([part[name] for part in parts])) for name in parts[0]}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> SceneRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
