"""Which model the app serves: the one asked for, or, when its files cannot be fetched, the bundled offline demo model
with a banner saying so and how to get the real one."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from cobra_app.loading import ModelUnavailableError
from cobra_app.loading.hub import hub_cache_only

log = logging.getLogger(__name__)


@dataclass
class ModelChoice:
    cobra: object  # cobra_app.pipeline.Cobra
    requested: str
    source: str  # what was actually loaded
    fallback_reason: str | None = None  # why the requested model is not the one served

    @property
    def is_fallback(self) -> bool:
        return self.fallback_reason is not None

    def banner(self) -> str:
        """Markdown for the top of the page ("" when the requested model runs)."""
        if not self.is_fallback:
            return ""
        return (
            f"**Offline demo model.** `{self.requested}` could not be loaded ({self.fallback_reason}), so Cobra Chat "
            "is running the small demo model bundled in `assets/demo-model`. It only knows synthetic scenes of "
            "coloured shapes: try the examples below. To chat with the real Cobra, connect this machine to the "
            f"Hugging Face hub (or download the files once into its cache) and restart with "
            f"`python app.py --model {self.requested}`, or pass `--model` a local model directory."
        )


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (False at once in offline mode)."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _is_local(source: str) -> bool:
    return Path(source).exists()


def start_cpu_kernels(device: str) -> None:
    """Before loading a model to serve on `device`: on a CPU, the kernels load now when a build is cached, else they
    build in a background process while PyTorch ops serve (`cpu_kernel.load_in_background`): never a compile before
    the first reply."""
    from cobra_app.loading import resolve_device
    from cobra_app.model.ops import cpu_kernel

    if resolve_device(device).type == "cpu":
        cpu_kernel.load_in_background()


def choose_model(requested: str, fallback: str | None, device: str = "auto", dtype: str = "auto",
                 loader=None, llm: str | None = None, vision: str | None = None) -> ModelChoice:
    """Load `requested` (with `llm` / `vision`, the files of a release-layout run); on ModelUnavailableError load
    `fallback` (the self-contained demo model) and say why in the banner.

    Other errors (a corrupt checkpoint, an unknown id) are not hidden: they propagate, since serving a different model
    would mislead. `loader` defaults to `cobra_app.load` (tests pass their own)."""
    if loader is None:
        from cobra_app.pipeline import load as loader
    online = True
    try:
        if _is_local(requested) or (online := hub_reachable()):
            return ModelChoice(loader(requested, device=device, dtype=dtype, llm=llm, vision=vision), requested,
                               requested)
        log.warning("The Hugging Face hub is unreachable: looking for %s in the local cache only.", requested)
        with hub_cache_only():
            return ModelChoice(loader(requested, device=device, dtype=dtype, llm=llm, vision=vision), requested,
                               requested)
    except ModelUnavailableError as exc:
        if not fallback:
            raise
        reason = ("its files could not be fetched from the Hugging Face hub" if online else
                  "there is no connection to the Hugging Face hub and its files are not in the local cache")
        log.warning("%s is unavailable (%s); falling back to %s", requested, exc, fallback)
    if not Path(fallback).exists():
        raise ModelUnavailableError(
            f"{requested} is unavailable ({reason}) and the offline demo model {fallback} is missing too. "
            "Connect to the internet or pass --model a local model directory.")
    return ModelChoice(loader(fallback, device=device, dtype=dtype), requested, str(fallback), reason)
