"""Hugging Face Spaces support: `@gpu` is `spaces.GPU` when the `spaces` package is importable (ZeroGPU hardware
attaches a GPU for the duration of each decorated call), and does nothing elsewhere (GPU Spaces, the free CPU tier,
a laptop)."""

from __future__ import annotations

import functools

try:  # present on Hugging Face Spaces
    import spaces as _spaces
except ImportError:  # pragma: no cover - depends on the machine
    _spaces = None


def gpu(fn=None, *, duration: int = 60):
    """Decorate a model-bound handler (plain function or generator): `spaces.GPU(duration=...)` when available."""
    if fn is None:
        return functools.partial(gpu, duration=duration)
    if _spaces is None:
        return fn
    return _spaces.GPU(duration=duration)(fn)
