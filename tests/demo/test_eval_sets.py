"""Spec: each evaluation set draws what its name says (the original items, held-out templates only, the held-out
rendering family only, recombined colours and shapes, absent objects only, the second renderer) and carries the
issue's targets (and ours, for recombinations)."""

from cobra_app.demo.conversations import make_eval_set
from cobra_app.demo.eval_sets import DEFAULT_SEED, EVAL_SETS
from cobra_app.demo.outside.render import Picture
from cobra_app.demo.phrasing import HELD_OUT, Phrasing


def test_the_original_set_is_make_eval_set_unchanged():
    assert EVAL_SETS["original"].make(DEFAULT_SEED, 60) == make_eval_set(DEFAULT_SEED, 60)


def test_the_templates_set_is_worded_by_the_held_out_split_on_the_original_look():
    items = EVAL_SETS["templates"].make(1, 120)
    assert items == make_eval_set(1, 120, phrasing=HELD_OUT)  # which never reads a trained template: test_conversations
    assert all(scene.style is None for scene, _ in items)  # the original look: only the wording is new


def test_the_rendering_set_draws_the_held_out_family_only():
    items = EVAL_SETS["rendering"].make(1, 60)
    assert all(scene.style.shadow and scene.style.stripes for scene, _ in items)
    assert {qa.kind for _, qa in items} == {"describe", "count", "colour", "shape", "exist", "spatial"}


def test_the_swapped_set_asks_existence_of_recombined_colours_and_shapes_in_the_original_templates_and_look():
    items = EVAL_SETS["swapped"].make(1, 200)
    assert {qa.kind for _, qa in items} == {"exist"} and all(scene.style is None for scene, _ in items)
    assert sum(qa.tags == ("swapped",) for _, qa in items) > 120  # the rest: scenes without one (a quarter: one object)
    assert items == make_eval_set(1, 200, kinds=("exist",), phrasing=Phrasing(swap_share=1.0))


def test_the_absent_set_asks_about_missing_objects_only():
    for scene, qa in EVAL_SETS["absent"].make(1, 200):
        assert qa.tags == ("absent",) and qa.answer.startswith("There is no ")
        named = qa.answer.removeprefix("There is no ").removesuffix(".").removesuffix(" object")
        assert all(named not in (o.shape, o.colour) for o in scene.objects)


def test_the_outside_set_uses_the_second_renderer_and_has_no_targets():
    items = EVAL_SETS["outside"].make(1, 12)
    assert all(isinstance(picture, Picture) for picture, _ in items)
    assert EVAL_SETS["outside"].image_of(items[0][0]).size == (items[0][0].side,) * 2
    assert EVAL_SETS["outside"].targets == {}


def test_targets_are_the_issues():
    assert EVAL_SETS["templates"].targets == {"exist": 0.95, "spatial / true-false": 0.90, "spatial / yes-no": 0.90,
                                              "colour": 0.95, "shape": 0.95, "count": 0.90}
    assert EVAL_SETS["rendering"].targets == {"exist": 0.93, "spatial": 0.88}
    assert EVAL_SETS["swapped"].targets == {"exist": 0.95}  # ours: H1, shipped before R10, scores 98.2
    assert EVAL_SETS["absent"].targets == {"all": 0.90} and EVAL_SETS["original"].targets["describe"] == 0.90
