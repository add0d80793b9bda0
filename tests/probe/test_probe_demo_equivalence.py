"""The CLI's accuracies equal the demo evaluation's (`cobra_app.demo.evaluate.evaluate_items`) on the same cases.

Both read the same prompts (the demo world's questions; a True/False statement re-wrapped by the runner in the same
`TRUE_FALSE_PROMPT`), the same pixels (PNG is lossless), and score the first generated position the same way
(reference section 7, `cobra_app.probe.scoring`). The evaluation batches prompts of equal length, the CLI scores one
case at a time, so probabilities agree to float rounding and predictions exactly.

Always on a tiny random model; on the shipped demo model when `assets/demo-model` exists: the evaluation's own
held-out cases, and the shipped spatial suite's cases.
"""

import json
import os
from pathlib import Path

import pytest

from cobra_app.__main__ import main as cli_main
from cobra_app.demo.conversations import QA, make_eval_set
from cobra_app.demo.evaluate import DEFAULT_SEED, evaluate_items
from cobra_app.demo.phrasing import TRUE_FALSE_PROMPT
from cobra_app.demo.scenes import render
from cobra_app.probe.make_suites import example_scenes, statement_of, suite_from_demo_items
from cobra_app.probe.scoring import answers_for, closed_set_prompt, encode_image, predict, score_prompt

REPO = Path(__file__).resolve().parents[2]
DEMO_MODEL = Path(os.environ.get("COBRA_PROBE_DEMO_MODEL", REPO / "assets" / "demo-model"))  # override: a pilot run
PROBES = REPO / "assets" / "probes"
CLOSED_SET_KINDS = ("exist", "spatial")
needs_demo_model = pytest.mark.skipif(not (DEMO_MODEL / "config.json").is_file(),
                                      reason="assets/demo-model is not trained yet")


def run_cli(suite: Path, model: Path, out: Path) -> dict:
    assert cli_main(["probe", str(suite), "--model", str(model), "--out", str(out), "--device", "cpu",
                     "--dtype", "float32"]) == 0
    return json.loads((out / "results.json").read_text())


def assert_same_accuracies(data: dict, items: list, evaluation: list) -> None:
    """Per category (= the items' kind, or a given category) and per case: the CLI's results.json vs the evaluation."""
    closed = [(item, r) for item, r in zip(items, evaluation) if r.p_answer is not None]
    assert len(data["results"]) == len(closed)
    by_category: dict[str, list[bool]] = {}
    for row, ((_, qa), r) in zip(data["results"], closed):
        assert row["prediction"] == r.prediction and row["correct"] == r.correct
        assert row["probs"][qa.answer] == pytest.approx(r.p_answer, abs=1e-5)
        by_category.setdefault(row["category"], []).append(r.correct)
    for category, hits in by_category.items():
        assert data["metrics"]["categories"][category]["accuracy"] == sum(hits) / len(hits), category
    overall = [r.correct for _, r in closed]
    assert data["metrics"]["overall"]["accuracy"] == sum(overall) / len(overall)


def test_statement_round_trip():
    for _, qa in make_eval_set(1, 40, kinds=("spatial",)):
        if qa.answer in ("True", "False"):
            assert closed_set_prompt(statement_of(qa.question), "true-false") == qa.question
    with pytest.raises(ValueError, match="not a True/False prompt"):
        statement_of("Is there a dog?")


def test_cli_equals_the_demo_evaluation_on_a_tiny_model(cobra, tiny_model_dir, tmp_path):
    items = make_eval_set(11, 24, kinds=(*CLOSED_SET_KINDS, "count"))  # the open "count" items are left out
    size = cobra.config.vision.image_size  # the evaluation renders at the model's size (32 px here)
    data = run_cli(suite_from_demo_items(items, tmp_path / "suite", image_size=size), tiny_model_dir, tmp_path / "o")
    assert data["cases"] == 16
    assert_same_accuracies(data, items, evaluate_items(cobra.vlm, cobra.tokenizer, items))

    # and bit for bit against the shared path applied to the in-memory scenes and the demo world's own prompts
    direct = []
    for scene, qa in items:
        if qa.choices is not None:
            answers = answers_for(qa.answer)
            probs = score_prompt(cobra.vlm, cobra.turns, encode_image(cobra.vlm, render(scene, size)), qa.question,
                                 answers)
            direct.append((probs[0], predict(probs, answers)))
    assert [(r["p_positive"], r["prediction"]) for r in data["results"]] == direct


@pytest.mark.slow
@needs_demo_model
def test_cli_equals_the_demo_evaluation_on_its_held_out_cases(tmp_path):
    from cobra_app import load

    items = make_eval_set(DEFAULT_SEED, 120, kinds=CLOSED_SET_KINDS)  # the first closed-set items of `eval-demo`
    data = run_cli(suite_from_demo_items(items, tmp_path / "suite"), DEMO_MODEL, tmp_path / "out")
    model = load(DEMO_MODEL, device="cpu", dtype="float32")
    assert_same_accuracies(data, items, evaluate_items(model.vlm, model.tokenizer, items))


@pytest.mark.slow
@needs_demo_model
def test_cli_equals_the_demo_evaluation_on_the_shipped_spatial_suite(tmp_path):
    """The example suite's own cases, rebuilt as demo items from the generator's scenes, through `evaluate_items`."""
    from cobra_app import load

    scenes = example_scenes()
    items = []
    for line in (PROBES / "spatial.jsonl").read_text().splitlines():
        case = json.loads(line)
        question = TRUE_FALSE_PROMPT.format(statement=case["question"])
        items.append((scenes[int(case["image"][-7:-4])], QA(question, case["answer"], "spatial", (case["category"],))))
    data = run_cli(PROBES / "spatial.jsonl", DEMO_MODEL, tmp_path / "out")
    model = load(DEMO_MODEL, device="cpu", dtype="float32")
    assert_same_accuracies(data, items, evaluate_items(model.vlm, model.tokenizer, items))
