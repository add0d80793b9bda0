"""Held-out accuracy of a Cobra model on synthetic scenes, per evaluation set and question kind (issues 4 and 23).

    python -m cobra_app.demo.evaluate --model assets/demo-model --n 1200 --seed 2024 --doc docs/DEMO_MODEL.md

Single-turn items of each set of `eval_sets.EVAL_SETS` (scenes never seen in training: another seed *and* another seed
stream; the held-out templates, rendering family and outside check never trained on at all).
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
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from cobra_app.demo.conversations import QA
from cobra_app.demo.eval_report import (
    ItemResult,
    Row,
    format_table,
    normalise,
    report_markdown,
    summarise,
    targets_met,
    write_report,
)
from cobra_app.demo.eval_sets import DEFAULT_SEED, EVAL_SETS
from cobra_app.demo.scenes import render
from cobra_app.generation import SamplingParams, closed_set_probs, generate_text
from cobra_app.model.cobra import CobraVLM
from cobra_app.prompting import TurnTokenizer, get_prompt_builder

MAX_NEW_TOKENS = 48  # the longest reference reply (a four-object description) is ~22 tokens


def evaluate_items(
    vlm: CobraVLM,
    tokenizer,
    items: Sequence[tuple[Any, QA]],
    *,
    image_of: Callable[[Any], Image.Image] = render,
    batch_size: int = 64,
    max_new_tokens: int = MAX_NEW_TOKENS,
    progress: bool = False,
) -> list[ItemResult]:
    """Answer every (scene, single-turn question) item, the scene drawn by `image_of`; results in the items' order."""
    tokens = TurnTokenizer(tokenizer, get_prompt_builder(vlm.config.prompt_format))
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
            pixels = [vlm.image_transform(image_of(items[i][0])) for i in batch]
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


@dataclass
class SetOutcome:
    """One evaluation set's results and their summary."""

    name: str
    results: list[ItemResult]
    rows: list[Row]
    seconds: float

    @property
    def title(self) -> str:
        return EVAL_SETS[self.name].title

    @property
    def targets(self) -> dict[str, float]:
        return EVAL_SETS[self.name].targets

    @property
    def met(self) -> dict[str, tuple[float, float, bool]]:
        return targets_met(self.rows, self.targets)


def evaluate_set(vlm: CobraVLM, tokenizer, name: str, seed: int, n: int, batch_size: int = 64,
                 progress: bool = False) -> SetOutcome:
    """Draw `n` items of the set `name` from `seed` and answer them."""
    start = time.monotonic()
    eval_set = EVAL_SETS[name]
    results = evaluate_items(vlm, tokenizer, eval_set.make(seed, n), image_of=eval_set.image_of,
                             batch_size=batch_size, progress=progress)
    return SetOutcome(name, results, summarise(results), time.monotonic() - start)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cobra_app.demo.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="assets/demo-model", help="model directory (or any source `load` accepts)")
    p.add_argument("--n", type=int, default=1200, help="questions per set (cycling through the question kinds)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="held-out seed (training uses 0)")
    p.add_argument("--sets", default=",".join(EVAL_SETS), help=f"comma-separated, of {', '.join(EVAL_SETS)}")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="float32", help="as `load` takes it: float32 (default), bfloat16, int8, auto")
    p.add_argument("--doc", type=Path, default=None, help="markdown file to write the report into (e.g. docs/DEMO_MODEL.md)")
    p.add_argument("--results", type=Path, default=None, help="write per-item results as JSON lines")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    names = [name.strip() for name in args.sets.split(",") if name.strip()]
    if unknown := [name for name in names if name not in EVAL_SETS]:
        p.error(f"unknown evaluation set(s) {', '.join(unknown)}; known: {', '.join(EVAL_SETS)}")
    from cobra_app import load  # heavy imports only when run

    torch.set_num_threads(args.threads)
    model = load(args.model, device="cpu", dtype=args.dtype)
    outcomes = []
    for name in names:
        outcome = evaluate_set(model.vlm, model.tokenizer, name, args.seed, args.n, args.batch_size,
                               progress=not args.no_progress)
        outcomes.append(outcome)
        print(f"\n## {name}: {outcome.title}\n\n{format_table(outcome.rows, outcome.targets)}")
        for group, (acc, target, ok) in outcome.met.items():
            print(f"{group:22s} {acc:.1%} (target {target:.0%}) {'ok' if ok else 'MISSED'}")
    if args.results:
        args.results.write_text("".join(json.dumps({"set": o.name, **r.to_dict()}) + "\n"
                                        for o in outcomes for r in o.results))
    if args.doc:
        command = "python -m cobra_app.demo.evaluate " + " ".join(sys.argv[1:] if argv is None else argv)
        model_dir = Path(args.model)
        if model_dir.is_dir():
            write_report(args.doc, report_markdown(model_dir, outcomes, command, args.seed))
            print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
