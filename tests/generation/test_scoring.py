"""Closed-set scoring: full-vocabulary softmax in fp32, renormalised over the candidates."""

import math

import pytest
import torch

from cobra_app.generation import ANSWER_PAIRS, AnswerPair, closed_set_probs, get_answer_pair
from cobra_app.prompting import TurnTokenizer, get_prompt_builder
from tests.helpers import make_test_tokenizer


def hand_probs(logits: list[float], ids: list[int]) -> list[float]:
    """Reference section 7 literally, in float64: softmax over the vocabulary, read, renormalise."""
    exp = [math.exp(x - max(logits)) for x in logits]
    probs = [e / sum(exp) for e in exp]
    picked = [probs[i] for i in ids]
    return [p / sum(picked) for p in picked]


@pytest.mark.parametrize("ids", [[3, 17], [17, 3], [0, 5, 99], [42]])
def test_matches_hand_softmax_and_sums_to_one(ids):
    logits = torch.randn(100, generator=torch.Generator().manual_seed(0)) * 4
    got = closed_set_probs(logits, ids)
    assert isinstance(got, tuple) and len(got) == len(ids)
    assert sum(got) == pytest.approx(1.0, abs=1e-6)
    assert list(got) == pytest.approx(hand_probs(logits.tolist(), ids), abs=1e-6)


def test_low_precision_logits_are_scored_in_fp32():
    logits = (torch.randn(500, generator=torch.Generator().manual_seed(1)) * 8).to(torch.bfloat16)
    got = closed_set_probs(logits, [10, 20])
    assert list(got) == pytest.approx(hand_probs(logits.float().tolist(), [10, 20]), abs=1e-6)


def test_candidates_far_below_the_top_still_renormalise():
    """Both candidates underflow a plain fp32 softmax (0/0); the log-space renormalisation does not."""
    logits = torch.zeros(50)
    logits[0], logits[1], logits[2] = 200.0, 10.0, 9.0
    assert torch.softmax(logits, -1)[1:3].sum() == 0
    assert list(closed_set_probs(logits, [1, 2])) == pytest.approx([1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))])


@pytest.mark.parametrize("ids", [[], [1, 1], [-1, 2], [2, 50]])
def test_bad_candidates_raise(ids):
    with pytest.raises(ValueError, match="distinct ids"):
        closed_set_probs(torch.zeros(50), ids)


def test_logits_must_be_one_position():
    with pytest.raises(ValueError, match=r"\[vocab\]"):
        closed_set_probs(torch.zeros(1, 50), [1, 2])


def test_answer_pair_registry():
    assert ANSWER_PAIRS == {"yes-no": AnswerPair("Yes", "No"), "true-false": AnswerPair("True", "False")}
    assert get_answer_pair("true-false").words == ("True", "False")
    with pytest.raises(ValueError, match="unknown answer pair"):
        get_answer_pair("maybe")


@pytest.mark.parametrize("name", sorted(ANSWER_PAIRS))
def test_answer_pair_probs(name):
    tokenizer = make_test_tokenizer()
    tt = TurnTokenizer(tokenizer, get_prompt_builder("zephyr"))
    pair = get_answer_pair(name)
    logits = torch.zeros(len(tokenizer))
    logits[tt.answer_token_id(pair.positive)] = 2.0
    logits[tt.answer_token_id(pair.negative)] = 1.0
    positive, negative = pair.probs(logits, tt)
    assert positive == pytest.approx(1 / (1 + math.exp(-1)))
    assert positive + negative == pytest.approx(1.0)
