"""What an evaluation found, as tables: per-item results, accuracy per kind and sub-group, targets met, and the
markdown report `evaluate --doc` writes into docs/DEMO_MODEL.md."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from safetensors import safe_open

BEGIN, END = "<!-- evaluation:begin (written by cobra_app.demo.evaluate) -->", "<!-- evaluation:end -->"
KIND_NAMES = {"describe": "description", "count": "counting", "colour": "colour identification",
              "shape": "shape identification", "exist": "existence (POPE-style)",
              "spatial": "spatial relation (VSR-style)"}


def normalise(text: str) -> str:
    """Case, surrounding/multiple whitespace and trailing full stops do not count."""
    return " ".join(text.strip().lower().split()).rstrip(".").strip()


@dataclass
class ItemResult:
    kind: str
    tags: tuple[str, ...]
    question: str
    answer: str
    prediction: str
    correct: bool
    p_answer: float | None = None  # closed-set items: P(reference answer), renormalised over the pair

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Row:
    group: str  # "exist", "exist / adversarial", ...
    n: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")


# breakdowns: kind -> (label, function of tags giving the sub-group, None for none)
SUBGROUPS: dict[str, list[tuple[str, Callable[[tuple[str, ...]], str | None]]]] = {
    "count": [("target", lambda tags: tags[0])],
    "colour": [("absent", lambda tags: tags[0] if tags else None)],
    "shape": [("absent", lambda tags: tags[0] if tags else None)],
    "exist": [("POPE split", lambda tags: tags[0])],
    "spatial": [("format", lambda tags: tags[0]), ("relation", lambda tags: tags[1])],
}


def summarise(results: Sequence[ItemResult]) -> list[Row]:
    """Accuracy overall, per kind, and per sub-group (count target, POPE split, spatial format and relation)."""
    rows = [Row("all", len(results), sum(r.correct for r in results))]
    kinds = sorted({r.kind for r in results}, key=lambda k: list(KIND_NAMES).index(k) if k in KIND_NAMES else 99)
    for kind in kinds:
        of_kind = [r for r in results if r.kind == kind]
        rows.append(Row(kind, len(of_kind), sum(r.correct for r in of_kind)))
        for _, key in SUBGROUPS.get(kind, []):
            groups: dict[str, list[ItemResult]] = defaultdict(list)
            for r in of_kind:
                if (group := key(r.tags)) is not None:
                    groups[group].append(r)
            for name in sorted(groups):
                rows.append(Row(f"{kind} / {name}", len(groups[name]), sum(r.correct for r in groups[name])))
    return rows


def targets_met(rows: Sequence[Row], targets: dict[str, float]) -> dict[str, tuple[float, float, bool]]:
    """group -> (accuracy, target, met) for the groups with a target."""
    by_group = {r.group: r for r in rows}
    return {k: (by_group[k].accuracy, t, by_group[k].accuracy >= t) for k, t in targets.items() if k in by_group}


def format_table(rows: Sequence[Row], targets: dict[str, float]) -> str:
    """Markdown table: group, items, correct, accuracy, target."""
    lines = ["| question kind | items | correct | accuracy | target |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        kind = r.group.split(" / ")[0]
        label = KIND_NAMES.get(r.group, r.group) if " / " not in r.group else "&nbsp;&nbsp;" + r.group.split(" / ")[1]
        target = targets.get(r.group)
        mark = "" if target is None else f"≥ {target:.0%} {'✓' if r.accuracy >= target else '✗'}"
        name = f"**{label}**" if r.group == "all" or r.group == kind else label
        lines.append(f"| {name} | {r.n} | {r.correct} | {r.accuracy:.1%} | {mark} |")
    return "\n".join(lines)


def closed_set_margins(results: Sequence[ItemResult]) -> dict[str, float]:
    """Mean and 5th-percentile P(reference answer) over closed-set items."""
    ps = sorted(r.p_answer for r in results if r.p_answer is not None)
    if not ps:
        return {}
    return {"mean": sum(ps) / len(ps), "p05": ps[int(0.05 * (len(ps) - 1))], "n": len(ps)}


class Outcome(Protocol):
    """One evaluation set's results (`evaluate.SetOutcome`)."""

    name: str
    results: list[ItemResult]
    rows: list[Row]
    seconds: float
    title: str
    targets: dict[str, float]


def loss_summary(model_dir: Path) -> list[tuple[int, float]]:
    """(step, mean loss over the surrounding window) at a few points of the training log, if the model has one."""
    path = model_dir / "train_log.jsonl"
    if not path.is_file():
        return []
    losses = [json.loads(line)["loss"] for line in path.read_text().splitlines() if line.strip()]
    if not losses:
        return []
    n, window = len(losses), max(1, len(losses) // 50)
    points = sorted({1, n // 20, n // 10, n // 4, n // 2, 3 * n // 4, n} - {0})
    return [(p, sum(losses[max(0, p - window) : p]) / len(losses[max(0, p - window) : p])) for p in points]


def outcome_markdown(outcome: Outcome) -> list[str]:
    """One set's section: its table, closed-set margins and targets."""
    lines = [f"### {outcome.name}: {outcome.title}", "",
             f"{len(outcome.results)} single-turn questions, evaluated in {outcome.seconds:.0f} s.", "",
             format_table(outcome.rows, outcome.targets), ""]
    margins = closed_set_margins(outcome.results)
    if margins:
        lines += [f"Closed-set (Yes/No, True/False) items: mean P(reference answer) {margins['mean']:.3f}, "
                  f"5th percentile {margins['p05']:.3f} (n = {margins['n']}).", ""]
    met = targets_met(outcome.rows, outcome.targets)
    if met:
        missed = [k for k, (_, _, ok) in met.items() if not ok]
        lines += ["Targets: " + ("all met." if not missed else "missed for " + ", ".join(missed) + "."), ""]
    return lines


def storage_dtype(weights: Path) -> str:
    """The dtype the weights file stores its tensors in ("F16", "F32", ...)."""
    with safe_open(weights, framework="pt") as f:
        return f.get_slice(next(iter(f.keys()))).get_dtype()


def training_markdown(model_dir: Path, info: dict) -> list[str]:
    """The training run's command, steps, time, size and the monitor's table."""
    weights = model_dir / "model.safetensors"
    dir_bytes = sum(p.stat().st_size for p in model_dir.iterdir() if p.is_file())
    lines = []
    if info:
        cfg = info.get("train_config", {})
        lines += ["## Training run", "", "Command:", "", "```", info.get("command", "?"), "```", ""]
        lines += [
            f"- steps: {info.get('steps_done')} of {cfg.get('steps')} (stopped by {info.get('stopped_by')}), "
            f"{cfg.get('rows_per_batch')} question rows per step",
            f"- wall time: {info.get('wall_seconds', 0) / 60:.1f} min in all "
            f"({info.get('train_loop_seconds', 0) / 60:.1f} min of training steps), torch {info.get('torch')}, "
            f"{info.get('threads')} thread(s)",
            f"- parameters: {info.get('parameters', 0):,}",
        ]
    lines += [f"- model size: `model.safetensors` {weights.stat().st_size / 1e6:.2f} MB ({storage_dtype(weights)} "
              f"storage, fp32 compute), whole directory {dir_bytes / 1e6:.2f} MB", ""]
    summary = loss_summary(model_dir)
    if summary:
        lines += ["Loss (mean cross-entropy per assistant token plus the look-up losses, averaged over the preceding "
                  f"{max(1, summary[-1][0] // 50)} steps):", "", "| step | loss |", "|---:|---:|"]
        lines += [f"| {step} | {loss:.4f} |" for step, loss in summary]
        lines += [""]
    monitor = info.get("monitor") or []
    if monitor:
        kinds = [k for k in monitor[0] if k != "step"]
        lines += [f"Teacher-forced exact match during training ({info.get('train_config', {}).get('monitor_items')} "
                  "items drawn like training's, another seed):", "",
                  "| step | " + " | ".join(kinds) + " |", "|---:|" + "---:|" * len(kinds)]
        lines += ["| " + " | ".join([str(m["step"])] + [f"{m[k]:.2f}" for k in kinds]) + " |" for m in monitor]
        lines += [""]
    return lines


def report_markdown(model_dir: Path, outcomes: Sequence[Outcome], command: str, seed: int) -> str:
    """The whole report: every set's section, then the training run."""
    info_path = model_dir / "training.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    lines = ["## Held-out evaluation", "", "Command:", "", "```", command, "```", "",
             f"Items drawn from seed {seed} (training: seed {info.get('train_config', {}).get('seed', '?')}, another "
             "seed stream).", ""]
    for outcome in outcomes:
        lines += outcome_markdown(outcome)
    return "\n".join(lines + training_markdown(model_dir, info))


def write_report(doc: Path, section: str) -> None:
    """Put `section` between the evaluation markers of `doc` (created if missing); the rest of the file is kept."""
    block = f"{BEGIN}\n{section.rstrip()}\n{END}"
    text = doc.read_text() if doc.is_file() else "# The offline demo model\n\n"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
