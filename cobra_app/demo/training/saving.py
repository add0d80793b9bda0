"""A finished run on disk: the model directory (fp16 safetensors and tokenizer) and the run's settings and outcome."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import torch

from cobra_app.demo.training.config import TrainConfig
from cobra_app.demo.training.schedule import ScheduleReplay
from cobra_app.model.cobra import CobraVLM

LOG_FILE = "train_log.jsonl"  # one JSON object per optimizer step, written next to the model
INFO_FILE = "training.json"  # the run's settings and outcome, written next to the model
STORAGE_DTYPE = torch.float16  # halves the file (<= 10 MB: a Space takes it without Git LFS); compute stays fp32


@dataclass
class TrainResult:
    vlm: CobraVLM
    steps_done: int
    wall_seconds: float
    stopped_by: str  # "steps" | "time" | "replay" (an earlier run's schedule replayed to its end)
    log: list[dict] = field(default_factory=list)  # stage 2 (VLM), one entry per step
    vision_log: list[dict] = field(default_factory=list)  # stage 1 (vision warm-up)
    averaged_steps: int = 0  # the last steps whose weights `vlm` holds the mean of (0: the last step's own)


class StepLog:
    """Stage 2's log, one entry per optimizer step; with `out_dir`, also written there line by line (LOG_FILE) while
    the log is open (`with StepLog(out_dir) as log`)."""

    def __init__(self, out_dir: Path | None) -> None:
        self.entries: list[dict] = []
        self._path = None if out_dir is None else Path(out_dir) / LOG_FILE
        self._file: TextIO | None = None

    def __enter__(self) -> StepLog:
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self._path.open("w")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._file:
            self._file.close()

    def append(self, entry: dict) -> None:
        self.entries.append(entry)
        if self._file:
            self._file.write(json.dumps(entry) + "\n")
            self._file.flush()


def save(result: TrainResult, cfg: TrainConfig, tokenizer, out_dir: Path, train_seconds: float, command: str) -> Path:
    """Write the model directory (weights stored in STORAGE_DTYPE, read back as fp32) and the run info next to the
    loss log."""
    from cobra_app.loading import save_model_dir  # here: loading imports transformers/hub machinery

    save_model_dir(result.vlm, tokenizer, out_dir, storage_dtype=STORAGE_DTYPE)
    losses = [e["loss"] for e in result.log]
    info = {
        "command": command,
        "train_config": cfg.to_dict(),
        "steps_done": result.steps_done,
        "stopped_by": result.stopped_by,
        "averaged_steps": result.averaged_steps,
        "wall_seconds": round(result.wall_seconds, 1),
        "train_loop_seconds": round(train_seconds, 1),
        "parameters": sum(p.numel() for p in result.vlm.parameters()),
        "weights_bytes": (out_dir / "model.safetensors").stat().st_size,
        "weights_sha256": hashlib.sha256((out_dir / "model.safetensors").read_bytes()).hexdigest(),
        "vision_warm_up_loss_last_50": _mean([e["loss"] for e in result.vision_log if "vision_step" in e][-50:]),
        "projector_warm_up_loss_last_50": _mean([e["loss"] for e in result.vision_log if "projector_step" in e][-50:]),
        "loss_first_50": _mean(losses[:50]),
        "loss_last_50": _mean(losses[-50:]),
        "monitor": [{"step": e["step"], **e["monitor"]} for e in result.log if "monitor" in e],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


def read_schedule(run_dir: Path) -> tuple[dict, ScheduleReplay]:
    """A saved run's recipe (its training.json `train_config`, as saved) and the schedule its clock decided."""
    info = json.loads((run_dir / INFO_FILE).read_text())
    lrs = [json.loads(line)["lr"] for line in (run_dir / LOG_FILE).read_text().splitlines() if line.strip()]
    if len(lrs) != info["steps_done"]:
        raise ValueError(f"{run_dir / LOG_FILE} has {len(lrs)} steps, {INFO_FILE} says {info['steps_done']}")
    return info["train_config"], ScheduleReplay(lrs, info["averaged_steps"])


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 5) if values else None
