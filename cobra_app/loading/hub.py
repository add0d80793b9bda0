"""Files from the Hugging Face hub through huggingface_hub's cache; in offline mode the cache alone, with no network
call. Failures say which file, where it was looked for, and how to supply it instead (`Supplier`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants, hf_hub_download


class ModelUnavailableError(RuntimeError):
    """A model's files cannot be had (offline, missing repo or file). The message says what was tried."""


@dataclass(frozen=True)
class Supplier:
    """How a user points a load at a file it needs: command-line flag, environment variable, `load` argument."""

    flag: str
    env: str
    argument: str

    def hint(self, what: str) -> str:
        return f"Supply {what} with {self.flag} (env {self.env}; Python: load(..., {self.argument}=...))."


MODEL = Supplier("--model", "COBRA_MODEL", "source")
LLM = Supplier("--llm", "COBRA_LLM", "llm")
VISION = Supplier("--vision-weights", "COBRA_VISION", "vision")


def hub_cache_dir() -> Path:
    return Path(constants.HF_HUB_CACHE)


def hub_file(repo_id: str, filename: str, hint: str = "") -> Path:
    """Local path of `filename` in hub repo `repo_id`, downloading it into the hub cache when needed. `hint` (how to
    supply the file instead, e.g. `LLM.hint(...)`) ends the error message."""
    try:
        return Path(hf_hub_download(repo_id, filename))
    except Exception as exc:  # offline mode, no network, missing repo/file, gated repo: all mean "unavailable"
        offline = " (offline mode: HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise ModelUnavailableError(
            f"could not fetch '{filename}' from the Hugging Face hub repo '{repo_id}'{offline}; looked in the hub "
            f"cache {hub_cache_dir()} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}). "
            + (hint or "Check the network, or point to a local model directory instead.")
        ) from exc


@contextlib.contextmanager
def hub_cache_only() -> Iterator[None]:
    """Make huggingface_hub answer from its local cache only, as HF_HUB_OFFLINE=1 does (no request, no retries
    against an unreachable host). Process-wide while it lasts: for loading at start-up."""
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved
