"""Self-contained model directories: config.json, model.safetensors (every part, vision included) and tokenizer files.

Used for models whose parts are not on the hub, such as the offline demo model shipped in `assets/`.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from cobra_app.loading.checkpoint import load_state_dict_checked
from cobra_app.model.cobra import CONFIG_FORMAT, CobraConfig, CobraVLM

WEIGHTS = "model.safetensors"
TIED_KEY, TIED_SOURCE = "llm.lm_head.weight", "llm.backbone.embedding.weight"


def is_model_dir(path: Path) -> bool:
    config = Path(path) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("format") == CONFIG_FORMAT


def save_model_dir(vlm: CobraVLM, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> Path:
    """Write config, weights (tied lm_head stored once) and tokenizer to `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(vlm.config.to_dict(), indent=2) + "\n")
    state = {k: v.detach().contiguous() for k, v in vlm.state_dict().items() if k != TIED_KEY}
    save_file(state, out_dir / WEIGHTS, metadata={"format": "pt"})
    tokenizer.save_pretrained(out_dir)
    return out_dir


def load_model_dir(path: Path) -> tuple[CobraVLM, PreTrainedTokenizerBase]:
    """Load a self-contained model directory (fp32, CPU)."""
    path = Path(path)
    config = CobraConfig.from_dict(json.loads((path / "config.json").read_text()))
    vlm = CobraVLM(config)
    state = load_file(path / WEIGHTS)
    if TIED_SOURCE in state:
        state[TIED_KEY] = state[TIED_SOURCE]
    load_state_dict_checked(vlm, state, f"model directory {path}")
    return vlm, AutoTokenizer.from_pretrained(path)
