"""SamplingParams validation, the release's processor order, greedy and seeded sampling."""

import math
import re
from dataclasses import asdict

import pytest
import torch
from transformers import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from cobra_app.generation import SamplingParams, build_logits_processor, make_generator, next_token


def test_defaults():
    assert asdict(SamplingParams()) == {
        "max_new_tokens": 256,
        "greedy": True,
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
        "repetition_penalty": 1.0,
        "seed": None,
        "stop": (),
    }


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_new_tokens", 0), ("max_new_tokens", -5), ("max_new_tokens", 2.5), ("max_new_tokens", True),
        ("greedy", "yes"), ("greedy", 1),
        ("temperature", 0.0), ("temperature", -1.0), ("temperature", math.nan), ("temperature", math.inf),
        ("temperature", "hot"),
        ("top_k", -1), ("top_k", 2.0),
        ("top_p", 0.0), ("top_p", 1.5), ("top_p", math.nan),
        ("repetition_penalty", 0.0), ("repetition_penalty", -1.2), ("repetition_penalty", math.inf),
        ("seed", -1), ("seed", 2**64), ("seed", "42"), ("seed", 1.0),
        ("stop", "\n"), ("stop", ["\n"]), ("stop", ("",)), ("stop", ("ok", None)),
    ],
)  # fmt: skip
def test_nonsense_raises_a_clear_error(field, value):
    with pytest.raises(ValueError, match=f"^{field} must be .*, got {re.escape(repr(value))}"):
        SamplingParams(**{field: value})


def test_accepted_edge_values():
    SamplingParams(max_new_tokens=1, temperature=1e-3, top_k=10**9, top_p=1.0, repetition_penalty=0.5, seed=2**64 - 1)
    SamplingParams(temperature=2)  # an int is a number


def test_processor_order_matches_the_release():
    p = SamplingParams(greedy=False, top_k=5, temperature=0.7, top_p=0.9, repetition_penalty=1.3)
    kinds = [type(proc) for proc in build_logits_processor(p)]
    assert kinds == [RepetitionPenaltyLogitsProcessor, TopKLogitsWarper, TemperatureLogitsWarper, TopPLogitsWarper]


def test_neutral_values_add_no_processor():
    assert len(build_logits_processor(SamplingParams(greedy=False))) == 0
    # greedy only needs the penalty: the warpers keep the arg-max
    greedy = SamplingParams(top_k=5, temperature=0.7, top_p=0.9, repetition_penalty=1.3)
    assert [type(proc) for proc in build_logits_processor(greedy)] == [RepetitionPenaltyLogitsProcessor]


def hand_processed(logits: torch.Tensor, history: list[int], p: SamplingParams) -> torch.Tensor:
    """mamba_ssm's sampler by hand: repetition penalty, top-k, temperature, top-p. logits [V] -> [V]."""
    x = logits.clone()
    for i in set(history):
        x[i] = x[i] * p.repetition_penalty if x[i] < 0 else x[i] / p.repetition_penalty
    x[x < torch.topk(x, p.top_k).values[-1]] = -math.inf
    x = x / p.temperature
    order = torch.argsort(x)  # ascending: drop the low tail holding at most 1 - top_p of the mass
    drop = torch.cumsum(torch.softmax(x[order], -1), -1) <= 1 - p.top_p
    drop[-1] = False
    x[order[drop]] = -math.inf
    return x


def test_processed_distribution_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    logits, history = torch.randn(2, 50, generator=g) * 3, torch.tensor([[3, 7, 7, 11], [0, 1, 2, 49]])
    p = SamplingParams(greedy=False, top_k=20, temperature=0.6, top_p=0.8, repetition_penalty=1.5)
    got = build_logits_processor(p)(history, logits)
    for b in range(2):
        torch.testing.assert_close(got[b], hand_processed(logits[b], history[b].tolist(), p))


def test_greedy_is_argmax():
    logits = torch.randn(4, 30, generator=torch.Generator().manual_seed(1))
    history = torch.empty(4, 0, dtype=torch.long)
    assert torch.equal(next_token(logits, history, SamplingParams()), logits.argmax(-1))


def test_greedy_applies_repetition_penalty():
    logits = torch.tensor([[5.0, 4.0, -1.0]])
    p = SamplingParams(repetition_penalty=2.0)
    assert next_token(logits, torch.tensor([[1]]), p).item() == 0
    assert next_token(logits, torch.tensor([[0]]), p).item() == 1  # 5 / 2 < 4


def test_logits_are_not_modified():
    logits = torch.randn(1, 10)
    before = logits.clone()
    next_token(logits, torch.tensor([[1, 2]]), SamplingParams(greedy=False, top_k=3, repetition_penalty=1.5, seed=0))
    assert torch.equal(logits, before)


def test_seeded_sampling_reproduces_and_seeds_differ():
    logits = torch.zeros(1, 1000)
    history = torch.empty(1, 0, dtype=torch.long)

    def draws(seed: int) -> list[int]:
        p = SamplingParams(greedy=False, seed=seed)
        g = make_generator(p.seed)
        return [next_token(logits, history, p, g).item() for _ in range(20)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_unseeded_generators_differ():
    a, b = make_generator(None), make_generator(None)
    assert torch.rand(8, generator=a).tolist() != torch.rand(8, generator=b).tolist()


def test_sampling_follows_the_tempered_distribution():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    p = SamplingParams(greedy=False, temperature=0.5, seed=0)
    n = 40_000
    samples = next_token(logits.expand(n, -1), torch.empty(n, 0, dtype=torch.long), p, make_generator(p.seed))
    freq = torch.bincount(samples, minlength=4).float() / n
    torch.testing.assert_close(freq, torch.softmax(logits / 0.5, -1), atol=0.01, rtol=0)


@pytest.mark.parametrize("p", [SamplingParams(greedy=False, top_k=1, seed=0), SamplingParams(greedy=False, top_p=1e-6)])
def test_sampling_that_keeps_one_token_is_greedy(p):
    logits = torch.randn(64, 100, generator=torch.Generator().manual_seed(2))
    got = next_token(logits, torch.empty(64, 0, dtype=torch.long), p, make_generator(p.seed))
    assert torch.equal(got, logits.argmax(-1))


def test_top_k_larger_than_vocab_keeps_everything():
    p = SamplingParams(greedy=False, top_k=10**6)
    logits = torch.randn(1, 5)
    torch.testing.assert_close(build_logits_processor(p)(torch.empty(1, 0, dtype=torch.long), logits), logits)
