"""int8 weights against fp32: `python -m cobra_app.bench.int8_accuracy [--n 1200] [--seed 2024] [--no-demo] [--no-3b]`.

1. The demo model (assets/demo-model) on the held-out suite (`demo.evaluate`): accuracy per question kind in fp32 and
   with int8 LM projections and head (computed in fp32, and in bf16), and, over the closed-set (Yes/No, True/False) items,
   the mean and largest |dP| of the reference answer (= |dP(Yes)|: the pair's probabilities sum to 1) against fp32.
   Targets: every kind within 1 point of fp32, mean |dP| <= 0.01.
2. cobra+3b sizes, random weights (bf16, as `bench` builds them: Mamba's initial spread, `build_random`), for each
   weight seed: last-position logits of a prompt, and of decode steps after it, with int8 projections and head
   quantised from those weights, against the same bf16 weights computed in fp32: |int8 - reference| / |reference|
   (Euclidean norms). Target <= 0.02. bf16 arithmetic on the bf16 weights is shown for scale.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from cobra_app.demo.eval_report import ItemResult, summarise
from cobra_app.demo.eval_sets import DEFAULT_SEED
from cobra_app.demo.evaluate import evaluate_items
from cobra_app.loading import apply_precision, build_random, read_model
from cobra_app.loading.registry import MODELS
from cobra_app.model.mamba import MambaLM
from cobra_app.model.ops import cpu_kernel
from cobra_app.model.precision import Precision
from cobra_app.model.quantize import quantized_copy

DEMO_PRECISIONS = {
    "fp32": Precision(torch.float32, torch.float32),
    "int8, fp32 compute": Precision(torch.int8, torch.float32),
    "int8, bf16 compute": Precision(torch.int8, torch.bfloat16),
}


def demo_results(model: str, n: int, seed: int) -> dict[str, list[ItemResult]]:
    """Per precision, the held-out suite's results (the same items, in the same order)."""
    from cobra_app.demo.conversations import make_eval_set

    items = make_eval_set(seed, n)
    results = {}
    for name, precision in DEMO_PRECISIONS.items():
        vlm, tokenizer = read_model(model, device="cpu", dtype="float32")
        apply_precision(vlm, precision)  # int8: quantised from the fp32 weights
        results[name] = evaluate_items(vlm, tokenizer, items)
    return results


def demo_table(results: dict[str, list[ItemResult]]) -> str:
    """Accuracy per question kind for each precision (points against fp32), and |dP| of the closed-set items."""
    accuracy = {name: {row.group: row.accuracy for row in summarise(r) if " / " not in row.group}
                for name, r in results.items()}
    reference = accuracy["fp32"]
    lines = [f"{'question kind':<14}" + "".join(f"{name:>22}" for name in results)]
    for kind in reference:
        cells = [f"{accuracy[name][kind]:>14.1%} ({100 * (accuracy[name][kind] - reference[kind]):+.1f})"
                 for name in results]
        lines.append(f"{kind:<14}" + "".join(f"{c:>22}" for c in cells))
    fp32 = results["fp32"]
    for name, r in results.items():
        if name == "fp32":
            continue
        dp = [abs(a.p_answer - b.p_answer) for a, b in zip(r, fp32, strict=True) if b.p_answer is not None]
        flips = sum(a.prediction != b.prediction for a, b in zip(r, fp32, strict=True))
        lines.append(f"{name}: mean |dP(Yes)| {statistics.mean(dp):.4f}, largest {max(dp):.4f} over {len(dp)} "
                     f"closed-set items; {flips} of {len(r)} answers differ from fp32's")
    return "\n".join(lines)


@torch.no_grad()
def logits_after(lm: MambaLM, ids: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """Last-position logits of the prompt `ids` [1, L], then of `steps` greedy decode steps fed the reference's
    tokens (`ids`' continuation is chosen by the caller's first run)."""
    logits, state = lm(ids, logits_to_keep=1)
    out = [logits[0, -1]]
    for token in ids[0, -steps:] if steps else []:
        logits, state = lm.step(token[None], state)
        out.append(logits[0])
    return out


def relative(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[float]:
    return [((x - y).norm() / y.norm()).item() for x, y in zip(a, b, strict=True)]


def cobra_3b_table(prompt_tokens: int, steps: int, seed: int) -> str:
    """int8 (and bf16 arithmetic) against fp32 arithmetic on the same bf16 weights, at cobra+3b sizes."""
    config = MODELS["cobra+3b"].config
    lm = build_random(config, torch.bfloat16, seed=seed).llm.eval().requires_grad_(False)
    ids = torch.randint(2, config.llm.vocab_size, (1, prompt_tokens + steps), generator=torch.Generator().manual_seed(0))
    lm.compute_dtype = torch.float32
    reference = logits_after(lm, ids, steps)
    int8 = quantized_copy(lm)
    rows = {"int8, fp32 compute": logits_after(int8, ids, steps)}
    int8.compute_dtype = lm.compute_dtype = torch.bfloat16
    rows["int8, bf16 compute"] = logits_after(int8, ids, steps)
    rows["bf16 weights, bf16 compute"] = logits_after(lm, ids, steps)
    lines = [f"|logits - fp32 arithmetic on the bf16 weights| / |that|, prompt of {prompt_tokens} tokens then "
             f"{steps} decode steps (cobra+3b sizes, random weights, seed {seed}):"]
    for name, logits in rows.items():
        errors = relative(logits, reference)
        lines.append(f"  {name:<28} prompt {errors[0]:.4f}; steps " + " ".join(f"{e:.4f}" for e in errors[1:]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="assets/demo-model")
    parser.add_argument("--n", type=int, default=1200, help="held-out items (cycling through the question kinds)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--weight-seeds", type=int, nargs="+", default=[0, 1, 2], help="random cobra+3b models")
    parser.add_argument("--no-demo", dest="demo", action="store_false", help="skip the demo model's suite")
    parser.add_argument("--no-3b", dest="cobra_3b", action="store_false",
                        help="skip the cobra+3b-sized check (about 10 GB of memory)")
    args = parser.parse_args(argv)
    cpu_kernel.load_kernel()
    print(f"kernels {cpu_kernel.status()}, {torch.get_num_threads()} threads", flush=True)
    if args.demo:
        print(demo_table(demo_results(args.model, args.n, args.seed)), flush=True)
    if args.cobra_3b:
        for seed in args.weight_seeds:
            print(cobra_3b_table(args.prompt_tokens, args.steps, seed), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
