"""Spec: the evaluation answers held-out items through the app's inference path (closed-set scoring for Yes/No and
True/False, greedy decoding otherwise), batching changes nothing, and every set is summarised against its targets."""

import pytest
import torch

from cobra_app.demo import evaluate as E
from cobra_app.demo.conversations import QA_KINDS, make_eval_set
from cobra_app.demo.eval_report import format_table, normalise, summarise, targets_met
from cobra_app.demo.eval_sets import EVAL_SETS
from cobra_app.demo.model_config import tiny_config
from cobra_app.demo.scenes import render
from cobra_app.demo.tokenizer import build_demo_tokenizer
from cobra_app.demo.training.model_init import build_model
from cobra_app.generation import SamplingParams, closed_set_probs, generate_text
from cobra_app.prompting import TurnTokenizer, get_prompt_builder


@pytest.fixture(scope="module")
def tokenizer():
    return build_demo_tokenizer()


@pytest.fixture(scope="module")
def vlm(tokenizer):
    return build_model(tiny_config(len(tokenizer)), seed=1).eval()


@pytest.fixture(scope="module")
def items():
    return make_eval_set(seed=5, n=18)


def test_normalise_ignores_case_space_and_final_stop():
    assert normalise("  Two.  ") == normalise("two") == "two"
    assert normalise("A  red circle.") == "a red circle"
    assert normalise("Two") != normalise("Three.")


def test_every_kind_is_scored_the_way_the_reference_says(vlm, tokenizer, items):
    results = E.evaluate_items(vlm, tokenizer, items, batch_size=8)
    assert [r.question for r in results] == [qa.question for _, qa in items]
    assert {r.kind for r in results} == set(QA_KINDS)
    for r, (_, qa) in zip(results, items):
        if qa.choices:
            assert r.prediction in qa.choices and 0.0 <= r.p_answer <= 1.0
            assert r.correct == (r.p_answer > 0.5 or (r.p_answer == 0.5 and qa.answer == qa.choices[0]))
        else:
            assert r.p_answer is None and r.correct == (normalise(r.prediction) == normalise(qa.answer))


def test_results_match_a_plain_one_item_pipeline(vlm, tokenizer, items):
    """Batched evaluation = encode_images + prefill + closed_set_probs / greedy generate_text, one item at a time."""
    tokens = TurnTokenizer(tokenizer, get_prompt_builder("zephyr"))
    batched = E.evaluate_items(vlm, tokenizer, items, batch_size=64)
    for (scene, qa), result in zip(items, batched):
        pixels = {k: v[None] for k, v in vlm.image_transform(render(scene)).items()}
        with torch.no_grad():
            ids = torch.tensor([tokens.user_turn_ids(qa.question, first=True)])
            logits, state = vlm.prefill(ids, vlm.encode_images(pixels))
        if qa.choices:
            p = closed_set_probs(logits[0, -1, : len(tokenizer)], [tokens.answer_token_id(w) for w in qa.choices])
            assert result.p_answer == pytest.approx(p[qa.choices.index(qa.answer)], abs=1e-5)
        else:
            text = generate_text(vlm.llm, logits[0, -1], state, SamplingParams(max_new_tokens=E.MAX_NEW_TOKENS),
                                 tokens.eos_id, tokenizer)
            assert result.prediction == text.strip()


def test_summary_counts_and_breakdowns(vlm, tokenizer, items):
    results = E.evaluate_items(vlm, tokenizer, items)
    rows = {r.group: r for r in summarise(results)}
    assert rows["all"].n == len(items) and rows["all"].correct == sum(r.correct for r in results)
    for kind in QA_KINDS:
        assert rows[kind].n == sum(r.kind == kind for r in results)
    assert sum(r.n for g, r in rows.items() if g.startswith("exist / ")) == rows["exist"].n
    assert sum(r.n for g, r in rows.items() if g in ("spatial / yes-no", "spatial / true-false")) == rows["spatial"].n
    targets = EVAL_SETS["original"].targets
    table = format_table(list(rows.values()), targets)
    assert "| **existence (POPE-style)** |" in table and "≥ 98%" in table
    assert set(targets_met(list(rows.values()), targets)) == set(targets)


@pytest.mark.parametrize("name", list(EVAL_SETS))
def test_every_set_is_evaluated_with_its_own_pictures(vlm, tokenizer, name):
    outcome = E.evaluate_set(vlm, tokenizer, name, seed=5, n=12, batch_size=6)
    assert len(outcome.results) == 12 and outcome.rows[0].n == 12
    assert outcome.title == EVAL_SETS[name].title and set(outcome.met) <= set(EVAL_SETS[name].targets)


def test_the_command_refuses_unknown_sets(capsys):
    with pytest.raises(SystemExit):
        E.main(["--sets", "original,nonsense"])
    assert "unknown evaluation set(s) nonsense" in capsys.readouterr().err
