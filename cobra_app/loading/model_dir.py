"""Self-contained model directories: config.json, model.safetensors (every part, vision included) and tokenizer files.

What `python -m cobra_app convert` writes from a release-layout run (then loadable offline with no other file), and
the format of models whose parts are not on the hub, such as the offline demo model shipped in `assets/`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from cobra_app.loading.checkpoint import load_state_dict_checked, tied_parameters
from cobra_app.loading.hub import MODEL, ModelUnavailableError
from cobra_app.model.cobra import CONFIG_FORMAT, CobraConfig, CobraVLM

WEIGHTS = "model.safetensors"


def is_model_dir(path: Path) -> bool:
    config = Path(path) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("format") == CONFIG_FORMAT


def save_model_dir(vlm: CobraVLM, tokenizer: PreTrainedTokenizerBase, out_dir: Path,
                   storage_dtype: torch.dtype | None = None) -> Path:
    """Write config, weights (each tensor in its dtype, or floating-point ones cast to `storage_dtype` when given,
    e.g. float16 to halve the file; a tied parameter stored once) and tokenizer to `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(vlm.config.to_dict(), indent=2) + "\n")
    aliases = tied_parameters(vlm)
    state = {k: v.detach().contiguous() for k, v in vlm.state_dict().items() if k not in aliases}
    if storage_dtype is not None:
        state = {k: v.to(storage_dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, out_dir / WEIGHTS, metadata={"format": "pt"})
    tokenizer.save_pretrained(out_dir)
    return out_dir


class ModelDir:
    """A self-contained model directory, read config first (a missing file fails before the weights are read)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not (self.path / WEIGHTS).is_file():
            raise ModelUnavailableError(f"{WEIGHTS} not found: looked for {self.path / WEIGHTS} (a model directory "
                                        "holds config.json, model.safetensors and the tokenizer files). "
                                        + MODEL.hint("a complete model directory"))
        self.config = CobraConfig.from_dict(json.loads((self.path / "config.json").read_text()))

    def load_weights(self, vlm: CobraVLM) -> None:
        """Fill `vlm` (built on the meta device from `self.config`)."""
        load_state_dict_checked(vlm, load_file(self.path / WEIGHTS), f"model directory {self.path}", take=True)

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        return AutoTokenizer.from_pretrained(self.path)
