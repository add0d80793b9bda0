"""Conversations -> token rows: the per-turn Zephyr ids inference builds, and which of them carry the loss."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cobra_app.demo.conversations import QA
from cobra_app.prompting import TurnTokenizer

IGNORE = -100  # label of positions without loss

def encode_turns(turns: Sequence[QA], tokens: TurnTokenizer) -> tuple[list[int], list[bool]]:
    """A conversation's text ids (per-turn Zephyr tokenization, as at inference) and which ids are assistant tokens."""
    ids: list[int] = []
    assistant: list[bool] = []
    for i, qa in enumerate(turns):
        user, reply = tokens.user_turn_ids(qa.question, first=i == 0), tokens.assistant_turn_ids(qa.answer)
        ids += user + reply
        assistant += [False] * len(user) + [True] * len(reply)
    return ids, assistant


def labels_for(ids: Sequence[int], assistant: Sequence[bool]) -> list[int]:
    """Next-token labels: position t predicts ids[t + 1] when that is an assistant token, else IGNORE.

    (The image patches come first, so the first text token is predicted from an image position: never an assistant
    token, hence no loss there.)"""
    return [ids[t + 1] if assistant[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]


def rows_for_conversation(conversation: Sequence[QA], rng: np.random.Generator, multi_turn_prob: float) -> list[list[QA]]:
    """Rows a conversation is trained as: the whole conversation (multi-turn format) with probability
    `multi_turn_prob`, else each self-contained question as its own single-turn row (follow-ups need their context
    and are dropped there)."""
    if len(conversation) > 1 and rng.random() < multi_turn_prob:
        return [list(conversation)]
    return [[qa] for qa in conversation if not qa.follow_up] or [[conversation[0]]]
