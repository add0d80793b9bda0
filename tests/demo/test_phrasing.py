"""Spec: the question grammar gives every kind at least 30 templates, holds a fixed set of them out of training, keeps
the original templates in training, and varies the surface of a question without touching what it is about."""

import collections
import re

import numpy as np
import pytest

from cobra_app.demo.phrasing import (
    GRAMMAR,
    HELD_OUT,
    ORIGINAL_TEMPLATES,
    TRAINING,
    Phrasing,
    expand,
    perturb,
    protected_words,
    templates,
)

SLOT = re.compile(r"\{(\w+)\}")


def test_alternatives_expand_to_every_choice():
    assert expand("[Is there|Do you see] {obj}[ here|]?") == [
        "Is there {obj} here?", "Is there {obj}?", "Do you see {obj} here?", "Do you see {obj}?"]


def test_every_kind_has_at_least_thirty_templates_and_one_in_six_is_held_out():
    per_kind = collections.Counter()
    for key in GRAMMAR:
        train, held_out = templates(key, "train"), templates(key, "held-out")
        assert not set(train) & set(held_out)
        assert set(ORIGINAL_TEMPLATES[key]) <= set(train)  # the original wording is always trained on
        assert 0.1 < len(held_out) / (len(train) + len(held_out)) < 0.25, key
        per_kind[key.split("/")[0]] += len(train) + len(held_out)
    assert set(per_kind) == {"describe", "count", "colour", "shape", "exist", "spatial"}
    assert min(per_kind.values()) >= 30, per_kind
    assert len(templates("spatial/yes-no", "train")) + len(templates("spatial/yes-no", "held-out")) >= 30


def test_templates_of_a_key_use_only_its_slots():
    slots = {"describe": set(), "count/all": set(), "count/colour": {"colour"}, "count/shape": {"shapes"},
             "colour": {"shape"}, "shape": {"colour"}, "exist": {"obj", "objs"}, "spatial/yes-no": {"a", "rel", "b"},
             "spatial/true-false": {"a", "rel", "b"}}
    for key, allowed in slots.items():
        for split in ("train", "held-out", "original"):
            for template in templates(key, split):
                used = set(SLOT.findall(template))
                assert used <= allowed and (used or not allowed), (key, template)
                assert "[" not in template and "  " not in template


def test_the_split_is_fixed_by_the_text_alone():
    assert templates.__wrapped__("exist", "held-out") == templates("exist", "held-out")


def test_surface_variation_keeps_the_words_a_question_is_about():
    rng = np.random.default_rng(0)
    question = "Would you say the red circle is to the left of the blue square in this picture?"
    variants = [perturb(question, rng) for _ in range(2000)]
    changed = [v for v in variants if v != question]
    assert 0.3 < len(changed) / len(variants) < 0.6
    for v in variants:
        assert "red circle is to the left of the blue square" in v.lower()
    assert any(v == question.lower() for v in variants)
    assert any(not v.endswith("?") for v in variants)
    typos = [v for v in variants if v.lower().rstrip("?") not in (question.lower().rstrip("?"),)]
    assert typos and all(len(v.split()) == len(question.split()) for v in typos)  # one word changed, none added
    assert {"red", "circle", "left", "blue", "square", "true", "false"} <= protected_words()


def test_phrasings_name_their_split():
    assert TRAINING.split == "train" and TRAINING.noise and 0 < TRAINING.absent_share < 1
    assert HELD_OUT.split == "held-out" and HELD_OUT.original_share == 0
    with pytest.raises(ValueError, match="unknown phrasing split"):
        Phrasing("test")
