"""Hugging Face Spaces support. On ZeroGPU hardware (SPACES_ZERO_GPU set, the `spaces` package importable) a GPU is
attached only for the duration of each `spaces.GPU` call, which runs in a forked worker process: nothing that call
changes in memory survives it. So what is decorated is never a UI handler (the sessions it changes would be lost)
but the sessions' model calls themselves, which take their state, embeddings and ids as values and return the new
state (`cobra_app.sessions.compute`): `session_gpu_call()` is the decorator the app hands to the SessionManager.
`gpu` decorates a stateless handler (the probe suite). Elsewhere (GPU Spaces, the free CPU tier, a laptop) both do
nothing and everything runs in-process.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

try:  # present on Hugging Face Spaces
    import spaces as _spaces
except ImportError:  # pragma: no cover - depends on the machine
    _spaces = None

REPLY_DURATION_S = 120  # a GPU call that decodes a whole reply


def on_zero_gpu() -> bool:
    """True on ZeroGPU hardware (identified as the `spaces` package does: SPACES_ZERO_GPU=true)."""
    return _spaces is not None and os.environ.get("SPACES_ZERO_GPU", "").strip().lower() in ("1", "true", "yes", "on")


def session_gpu_call(duration: int = REPLY_DURATION_S) -> Callable[[Callable], Callable] | None:
    """The decorator for the sessions' model calls on ZeroGPU (`spaces.GPU(fn, duration=...)`), None elsewhere."""
    if not on_zero_gpu():
        return None
    return functools.partial(_spaces.GPU, duration=duration)


def gpu(fn=None, *, duration: int = 60):
    """Decorate a stateless model-bound handler: `spaces.GPU(duration=...)` when available."""
    if fn is None:
        return functools.partial(gpu, duration=duration)
    if _spaces is None:
        return fn
    return _spaces.GPU(duration=duration)(fn)
