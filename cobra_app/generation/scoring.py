"""Closed-set answer scoring (VSR, POPE): the release reads the first generated position's distribution over the
vocabulary and renormalises it over the candidate answers (reference section 7)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from cobra_app.prompting.tokenization import TurnTokenizer


def closed_set_probs(logits: Tensor, token_ids: Sequence[int]) -> tuple[float, ...]:
    """logits [V] (first generated position) -> P(candidate | one of the candidates), in `token_ids` order.

    Softmax over the full vocabulary in fp32, then renormalised over the set (done in log space: identical values,
    and no 0/0 when every candidate underflows).
    """
    ids = list(token_ids)
    if logits.dim() != 1:
        raise ValueError(f"logits must be [vocab], got shape {tuple(logits.shape)}")
    if not ids or len(set(ids)) != len(ids) or not all(0 <= i < logits.shape[0] for i in ids):
        raise ValueError(f"token_ids must be distinct ids in [0, {logits.shape[0]}), got {ids}")
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return tuple(log_probs[ids].softmax(dim=-1).tolist())


@dataclass(frozen=True)
class AnswerPair:
    """A binary answer set; each word must be a single token."""

    positive: str
    negative: str

    @property
    def words(self) -> tuple[str, str]:
        return self.positive, self.negative

    def probs(self, logits: Tensor, tokenizer: TurnTokenizer) -> tuple[float, float]:
        """logits [V] -> (P(positive), P(negative)) renormalised over the pair."""
        positive, negative = closed_set_probs(logits, [tokenizer.answer_token_id(w) for w in self.words])
        return positive, negative


ANSWER_PAIRS: dict[str, AnswerPair] = {
    "yes-no": AnswerPair("Yes", "No"),  # POPE
    "true-false": AnswerPair("True", "False"),  # VSR
}


def get_answer_pair(name: str) -> AnswerPair:
    try:
        return ANSWER_PAIRS[name]
    except KeyError:
        raise ValueError(f"unknown answer pair {name!r}; known: {sorted(ANSWER_PAIRS)}") from None
