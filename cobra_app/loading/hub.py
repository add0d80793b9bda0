"""Fetching files from the Hugging Face hub (cached by huggingface_hub, with its progress bars)."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import hf_hub_download


class ModelUnavailableError(RuntimeError):
    """A model's files cannot be had (offline, missing repo or file). The message says what was tried."""


def hub_file(repo_id: str, filename: str) -> Path:
    """Local path of `filename` in hub repo `repo_id`, downloading it into the hub cache when needed."""
    try:
        return Path(hf_hub_download(repo_id, filename))
    except Exception as exc:  # offline mode, no network, missing repo/file, gated repo: all mean "unavailable"
        raise ModelUnavailableError(
            f"could not fetch '{filename}' from the Hugging Face hub repo '{repo_id}' "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}). "
            "Check the network, or point to a local model directory instead."
        ) from exc
