"""The shipped example suites: reproduced byte for byte by the generator, valid, balanced, small, true to the scenes."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cobra_app.demo.conversations import POPE_SPLITS, SWAPPED
from cobra_app.demo.phrasing import TRUE_FALSE_PROMPT
from cobra_app.demo.scenes import RELATIONS
from cobra_app.probe import load_suite
from cobra_app.probe.make_suites import main as make_suites_main

REPO = Path(__file__).resolve().parents[2]
PROBES = REPO / "assets" / "probes"
IMAGES_BUDGET = 300_000  # bytes, all example images together


def test_the_vsr_prompt_is_the_papers():
    assert TRUE_FALSE_PROMPT.format(statement="S.") == (
        'Based on the image, is this statement "True" or "False"? S.\nRespond with "True" or "False" directly.')


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("probes")
    assert make_suites_main(["--out", str(out)]) == 0
    return out


def test_generator_reproduces_the_shipped_suites(regenerated):
    for name in ("spatial.jsonl", "existence.jsonl"):
        assert (regenerated / name).read_text() == (PROBES / name).read_text(), name
    shipped = sorted(p.name for p in (PROBES / "images").glob("*.png"))
    assert shipped == sorted(p.name for p in (regenerated / "images").glob("*.png")) and shipped
    for name in shipped:
        with Image.open(PROBES / "images" / name) as a, Image.open(regenerated / "images" / name) as b:
            assert a.size == b.size == (64, 64) and np.array_equal(np.asarray(a), np.asarray(b)), name


def test_images_are_small_and_all_used():
    images = list((PROBES / "images").glob("*.png"))
    assert sum(p.stat().st_size for p in images) < IMAGES_BUDGET
    used = set()
    for name in ("spatial.jsonl", "existence.jsonl"):
        used |= {c.image_path.name for c in load_suite(PROBES / name).cases}
    assert used == {p.name for p in images}


def test_spatial_suite_is_vsr_style_and_balanced_per_relation():
    suite = load_suite(PROBES / "spatial.jsonl")
    assert suite.bad_lines == [] and len(suite.cases) >= 150
    assert {c.answers for c in suite.cases} == {"true-false"}
    assert {c.category for c in suite.cases} == set(RELATIONS)
    counts = Counter((c.category, c.answer) for c in suite.cases)
    for rel in RELATIONS:
        assert abs(counts[rel, "True"] - counts[rel, "False"]) <= 1 and counts[rel, "True"] >= 15
    for c in suite.cases:  # statements only: the runner applies the template
        assert c.question.startswith("The ") and "Respond with" not in c.question


def test_existence_suite_is_pope_style_with_three_splits_and_the_swapped_one():
    suite = load_suite(PROBES / "existence.jsonl")
    assert suite.bad_lines == [] and {c.answers for c in suite.cases} == {"yes-no"}
    assert list(dict.fromkeys(c.category for c in suite.cases)) == [*POPE_SPLITS, SWAPPED]
    counts = Counter((c.category, c.answer) for c in suite.cases)
    for split in (*POPE_SPLITS, SWAPPED):
        assert counts[split, "Yes"] == counts[split, "No"] >= 100
    by_split = {s: {(c.image, c.question) for c in suite.cases if c.category == s and c.answer == "Yes"}
                for s in (*POPE_SPLITS, SWAPPED)}
    assert by_split["random"] == by_split["popular"] == by_split["adversarial"]  # same positives in every split
    assert by_split[SWAPPED] < by_split["random"]  # the same positives, of the scenes that have a recombination


def test_answers_agree_with_the_rendered_scenes():
    """Re-derive every answer from the generator's scenes (their geometry), not from the suite text."""
    from cobra_app.demo.scenes import relation_holds
    from cobra_app.probe.make_suites import example_scenes

    scenes = example_scenes()
    phrases = {"to the left of": "left of", "to the right of": "right of", "above": "above", "below": "below"}
    for line in (PROBES / "spatial.jsonl").read_text().splitlines():
        case = json.loads(line)
        scene = scenes[int(case["image"][-7:-4])]
        objects = {o.name: o for o in scene.objects}
        statement = case["question"].removeprefix("The ").removesuffix(".")
        (a, rest), = [(n, statement[len(n) + 4:]) for n in objects if statement.startswith(n + " is ")]
        (phrase, b), = [(p, rest[len(p) + 5:]) for p in phrases if rest.startswith(p + " the ")]
        assert phrases[phrase] == case["category"]
        assert relation_holds(objects[a], objects[b], case["category"]) is (case["answer"] == "True"), case
    for line in (PROBES / "existence.jsonl").read_text().splitlines():
        case = json.loads(line)
        scene = scenes[int(case["image"][-7:-4])]
        named = case["question"].removeprefix("Is there ").removesuffix(" in the image?").split(" ", 1)[1]
        assert (named in {o.name for o in scene.objects}) is (case["answer"] == "Yes"), case
        if case["category"] == SWAPPED:  # its colour and its shape are both in the scene
            colour, shape = named.split()
            assert colour in {o.colour for o in scene.objects} and shape in {o.shape for o in scene.objects}, case
