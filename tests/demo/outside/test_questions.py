"""Spec: the outside check asks every kind in its own wordings, answers from the picture's geometry in the demo
model's reply formats, and says how much of its wording the training grammar shares."""

import collections

from cobra_app.demo.conversations import QA_KINDS
from cobra_app.demo.outside.questions import WORDINGS, make_outside_set, overlap_with_training


def test_items_are_deterministic_cycle_the_kinds_and_balance_closed_answers():
    items = make_outside_set(1, 600)
    assert items == make_outside_set(1, 600) and items != make_outside_set(2, 600)
    assert [qa.kind for _, qa in items] == list(QA_KINDS) * 100
    answers = collections.Counter(qa.answer for _, qa in items if qa.choices)
    for yes, no in (("Yes", "No"), ("True", "False")):
        assert 0.35 < answers[yes] / (answers[yes] + answers[no]) < 0.65


def test_answers_follow_the_geometry():
    for picture, qa in make_outside_set(3, 300):
        things = sorted(picture.things, key=lambda t: t.cx)
        if qa.kind == "describe":
            assert all(f"{t.colour} {t.shape}" in qa.answer for t in things)
            positions = [qa.answer.index(f"{t.colour} {t.shape}") for t in things]
            assert positions == sorted(positions)
        if qa.kind == "exist":
            named = next(f"{t.colour} {t.shape}" for t in things if f"{t.colour} {t.shape}" in qa.question) \
                if qa.answer == "Yes" else None
            assert (named is not None) == (qa.answer == "Yes")


def test_wordings_are_mostly_not_the_grammars():
    shared, total = overlap_with_training()
    assert total == sum(len(w) for w in WORDINGS.values()) and shared / total < 0.2
