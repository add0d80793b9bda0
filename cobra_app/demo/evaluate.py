"""Held-out accuracy of a Cobra model on synthetic scenes, per question kind (issue 4).

    python -m cobra_app.demo.evaluate --model assets/demo-model --n 1200 --seed 2024 --doc docs/DEMO_MODEL.md

Single-turn items from `make_eval_set(seed, n)` (scenes never seen in training: another seed *and* another seed stream).
Inference is the app's: `vlm.encode_images`, then `vlm.prefill(user turn ids, image_embeds)`, then
- Yes/No and True/False questions: closed-set scoring as in the paper's VSR/POPE evaluation (reference section 7): the
  first generated position's softmax over the vocabulary, renormalised over the pair; prediction = arg-max;
- every other question: greedy decoding (`Decoder`, stop at EOS), exact match after normalisation (case, surrounding
  whitespace and final full stop ignored).
Items whose prompts have the same length are batched (no padding, so every row's state is exact).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from cobra_app.demo.conversations import QA, make_eval_set
from cobra_app.demo.scenes import Scene, render
from cobra_app.generation import SamplingParams, closed_set_probs, generate_text
from cobra_app.model.cobra import CobraVLM
from cobra_app.prompting import TurnTokenizer, get_prompt_builder

DEFAULT_SEED = 2024  # training uses seed 0 (and the monitor during training 777)
MAX_NEW_TOKENS = 48  # the longest reference reply (a four-object description) is ~22 tokens
# question kind -> minimum held-out accuracy (issue 4's "done when")
TARGETS: dict[str, float] = {"exist": 0.95, "spatial": 0.90, "colour": 0.90, "shape": 0.90, "count": 0.85}
KIND_NAMES = {"describe": "description", "count": "counting", "colour": "colour identification",
              "shape": "shape identification", "exist": "existence (POPE-style)", "spatial": "spatial relation (VSR-style)"}
BEGIN, END = "<!-- evaluation:begin (written by cobra_app.demo.evaluate) -->", "<!-- evaluation:end -->"


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


def evaluate_items(
    vlm: CobraVLM,
    tokenizer,
    items: Sequence[tuple[Scene, QA]],
    *,
    batch_size: int = 64,
    max_new_tokens: int = MAX_NEW_TOKENS,
    progress: bool = False,
) -> list[ItemResult]:
    """Answer every (scene, single-turn question) item; results in the items' order."""
    tokens = TurnTokenizer(tokenizer, get_prompt_builder(vlm.config.prompt_format))
    size = vlm.config.vision.image_size
    prompts = [tokens.user_turn_ids(qa.question, first=True) for _, qa in items]
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(prompts):
        by_length[len(ids)].append(i)
    batches = [group[j : j + batch_size] for group in by_length.values() for j in range(0, len(group), batch_size)]
    params = SamplingParams(max_new_tokens=max_new_tokens, greedy=True)
    vocab = len(tokenizer)
    results: dict[int, ItemResult] = {}
    bar = tqdm(total=len(items), disable=not progress, desc="evaluate", dynamic_ncols=True)
    with torch.no_grad():
        for batch in batches:
            pixels = [vlm.image_transform(render(items[i][0], size)) for i in batch]
            pixel_values = {name: torch.stack([p[name] for p in pixels]) for name in pixels[0]}
            image_embeds = vlm.encode_images(pixel_values)  # [b, P, d]
            input_ids = torch.tensor([prompts[i] for i in batch], device=vlm.device)  # [b, L]
            logits, state = vlm.prefill(input_ids, image_embeds, logits_to_keep=1)  # [b, 1, V]
            states = state.unstack()
            for row, i in enumerate(batch):
                qa = items[i][1]
                first = logits[row, -1]
                if qa.choices is not None:
                    probs = closed_set_probs(first[:vocab], [tokens.answer_token_id(w) for w in qa.choices])
                    prediction = qa.choices[max(range(len(probs)), key=probs.__getitem__)]
                    p_answer = probs[qa.choices.index(qa.answer)]
                    results[i] = ItemResult(qa.kind, qa.tags, qa.question, qa.answer, prediction,
                                            prediction == qa.answer, p_answer)
                else:
                    text = generate_text(vlm.llm, first, states[row], params, tokens.eos_id, tokenizer)
                    results[i] = ItemResult(qa.kind, qa.tags, qa.question, qa.answer, text.strip(),
                                            normalise(text) == normalise(qa.answer))
                bar.update(1)
    bar.close()
    return [results[i] for i in range(len(items))]


# ----------------------------------------------------------------------------------------------------------------------
# summaries


@dataclass(frozen=True)
class Row:
    group: str  # "exist", "exist / adversarial", ...
    n: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")


# breakdowns: kind -> (label, function of tags giving the sub-group)
SUBGROUPS: dict[str, list[tuple[str, Callable[[tuple[str, ...]], str]]]] = {
    "count": [("target", lambda tags: tags[0])],
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
                groups[key(r.tags)].append(r)
            for name in sorted(groups):
                rows.append(Row(f"{kind} / {name}", len(groups[name]), sum(r.correct for r in groups[name])))
    return rows


def targets_met(rows: Sequence[Row]) -> dict[str, tuple[float, float, bool]]:
    """kind -> (accuracy, target, met) for the kinds with a target."""
    by_group = {r.group: r for r in rows}
    return {k: (by_group[k].accuracy, t, by_group[k].accuracy >= t) for k, t in TARGETS.items() if k in by_group}


def format_table(rows: Sequence[Row]) -> str:
    """Markdown table: group, items, correct, accuracy, target."""
    lines = ["| question kind | items | correct | accuracy | target |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        kind = r.group.split(" / ")[0]
        label = KIND_NAMES.get(r.group, r.group) if " / " not in r.group else "&nbsp;&nbsp;" + r.group.split(" / ")[1]
        target = TARGETS.get(r.group)
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


# ----------------------------------------------------------------------------------------------------------------------
# report


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


def report_markdown(
    model_dir: Path, rows: Sequence[Row], results: Sequence[ItemResult], command: str, eval_seconds: float, seed: int
) -> str:
    info_path = model_dir / "training.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    weights = model_dir / "model.safetensors"
    dir_bytes = sum(p.stat().st_size for p in model_dir.iterdir() if p.is_file())
    lines = ["## Held-out evaluation", "", "Command:", "", "```", command, "```", ""]
    lines += [f"{len(results)} single-turn questions from `make_eval_set(seed={seed})` (training: seed "
              f"{info.get('train_config', {}).get('seed', '?')}, another seed stream). Evaluation took "
              f"{eval_seconds:.0f} s.", ""]
    lines += [format_table(rows), ""]
    margins = closed_set_margins(results)
    if margins:
        lines += [f"Closed-set (Yes/No, True/False) items: mean P(reference answer) {margins['mean']:.3f}, "
                  f"5th percentile {margins['p05']:.3f} (n = {margins['n']}).", ""]
    met = targets_met(rows)
    if met:
        missed = [k for k, (_, _, ok) in met.items() if not ok]
        lines += ["Targets: " + ("all met." if not missed else "missed for " + ", ".join(missed) + "."), ""]
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
    lines += [f"- model size: `model.safetensors` {weights.stat().st_size / 1e6:.2f} MB (fp32), whole directory "
              f"{dir_bytes / 1e6:.2f} MB", ""]
    summary = loss_summary(model_dir)
    if summary:
        lines += ["Loss (mean cross-entropy per assistant token, averaged over the preceding "
                  f"{max(1, summary[-1][0] // 50)} steps):", "", "| step | loss |", "|---:|---:|"]
        lines += [f"| {step} | {loss:.4f} |" for step, loss in summary]
        lines += [""]
    monitor = info.get("monitor") or []
    if monitor:
        kinds = [k for k in monitor[0] if k != "step"]
        lines += ["Held-out teacher-forced exact match during training (180 items of another seed):", "",
                  "| step | " + " | ".join(kinds) + " |", "|---:|" + "---:|" * len(kinds)]
        lines += ["| " + " | ".join([str(m["step"])] + [f"{m[k]:.2f}" for k in kinds]) + " |" for m in monitor]
        lines += [""]
    return "\n".join(lines)


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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cobra_app.demo.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="assets/demo-model", help="model directory (or any source `load` accepts)")
    p.add_argument("--n", type=int, default=1200, help="held-out questions (cycling through the question kinds)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="held-out seed (training uses 0)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--doc", type=Path, default=None, help="markdown file to write the report into (e.g. docs/DEMO_MODEL.md)")
    p.add_argument("--results", type=Path, default=None, help="write per-item results as JSON lines")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    from cobra_app import load  # heavy imports only when run

    torch.set_num_threads(args.threads)
    start = time.monotonic()
    model = load(args.model, device="cpu", dtype="float32")
    items = make_eval_set(args.seed, args.n)
    results = evaluate_items(model.vlm, model.tokenizer, items, batch_size=args.batch_size,
                             progress=not args.no_progress)
    seconds = time.monotonic() - start
    rows = summarise(results)
    print(format_table(rows))
    for kind, (acc, target, ok) in targets_met(rows).items():
        print(f"{kind:8s} {acc:.1%} (target {target:.0%}) {'ok' if ok else 'MISSED'}")
    if args.results:
        args.results.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in results))
    if args.doc:
        command = "python -m cobra_app.demo.evaluate " + " ".join(sys.argv[1:] if argv is None else argv)
        model_dir = Path(args.model)
        if model_dir.is_dir():
            write_report(args.doc, report_markdown(model_dir, rows, results, command, seconds, args.seed))
            print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
