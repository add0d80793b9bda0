"""Spec: the shipped offline demo model (`assets/demo-model`) loads through the loader release checkpoints use, fits the
size budget (a plain file a Space takes without Git LFS), and answers a fixed set of scenes and questions: the app's
example images (every suggested question) and the reported held-out evaluation sets (docs/DEMO_MODEL.md), with margins
on the closed-set probabilities."""

import json
from pathlib import Path

import pytest

from cobra_app.demo.eval_report import normalise, storage_dtype
from cobra_app.demo.eval_sets import DEFAULT_SEED, EVAL_SETS
from cobra_app.demo.evaluate import evaluate_set
from cobra_app.pipeline import load
from cobra_app.ui.examples import load_examples

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "assets" / "demo-model"
EXAMPLES = ROOT / "assets" / "examples"
MAX_WEIGHT_BYTES = 10 * 10**6  # the hub refuses plain files over 10 MB
CLOSED_SET_MARGIN = 0.75  # P(right answer) over the Yes/No pair, for every closed-set example question
EVALUATION_SIZE = 1200  # the reported evaluation: `python -m cobra_app eval-demo --n 1200` (seed DEFAULT_SEED)


pytestmark = pytest.mark.skipif(not (MODEL / "config.json").is_file(), reason="assets/demo-model is not trained yet")


@pytest.fixture(scope="module")
def cobra():
    return load(MODEL, device="cpu", dtype="float32")


def test_ships_as_a_self_contained_model_directory_within_budget():
    names = {p.name for p in MODEL.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert all(p.stat().st_size <= MAX_WEIGHT_BYTES for p in MODEL.iterdir())
    assert storage_dtype(MODEL / "model.safetensors") == "F16"
    assert json.loads((MODEL / "config.json").read_text())["model_id"] == "cobra-demo-synthetic"


def test_answers_every_suggested_question_about_the_example_images(cobra):
    examples = load_examples(EXAMPLES)
    assert len(examples) == 4 and all(len(example.questions) == 7 for example in examples)
    for example in examples:
        for question, answer in example.questions:
            if answer in ("Yes", "No"):
                p_right = cobra.score(example.image, question)[answer]
                assert p_right >= CLOSED_SET_MARGIN, (example.image.name, question, answer, p_right)
            else:
                reply = cobra.generate(example.image, question, max_new_tokens=48)
                assert normalise(reply) == normalise(answer), (example.image.name, question, reply)


TARGETS = [(name, group) for name, eval_set in EVAL_SETS.items() for group in eval_set.targets]


@pytest.fixture(scope="module")
def held_out(cobra):
    """The reported evaluation of every set with targets: set -> group -> (accuracy, target, met)."""
    return {name: evaluate_set(cobra.vlm, cobra.tokenizer, name, DEFAULT_SEED, EVALUATION_SIZE).met
            for name in {name for name, _ in TARGETS}}


@pytest.mark.parametrize("name, group", TARGETS)
def test_meets_the_accuracy_target_on_the_held_out_evaluation(held_out, name, group):
    accuracy, target, met = held_out[name][group]
    assert met, (name, group, accuracy, target)
