"""Spec: templated Q&A is seed-deterministic, agrees with the scene geometry, and balances closed-set answers.

The oracle below re-derives every answer from the question text and the object coordinates alone.
"""

import collections
import itertools
import re

import numpy as np

from cobra_app.demo.conversations import (
    QA,
    QA_KINDS,
    iter_training_examples,
    make_eval_set,
    sample_conversation,
)
from cobra_app.demo.scenes import COLOURS, PAIR_WEIGHTS, RELATION_MARGIN, SHAPES, Scene, sample_scene

NUMBERS = ["zero", "one", "two", "three", "four"]
COLOUR = "(" + "|".join(COLOURS) + ")"
SHAPE = "(" + "|".join(SHAPES) + ")"
PLURAL = "(" + "|".join(s + ("es" if s.endswith("s") else "s") for s in SHAPES) + ")"
TRUE_FALSE = re.compile(r'Based on the image, is this statement "True" or "False"\? The (.+) is (.+) the (.+)\.\n'
                        r'Respond with "True" or "False" directly\.')


def find(scene: Scene, name: str):
    (obj,) = [o for o in scene.objects if f"{o.colour} {o.shape}" == name]
    return obj


def unique(scene: Scene, attr: str, value: str):
    matches = [o for o in scene.objects if getattr(o, attr) == value]
    assert len(matches) == 1, f"ambiguous or missing reference {value!r}"
    return matches[0]


def spatial_truth(scene: Scene, a_name: str, phrase: str, b_name: str) -> bool:
    a, b = find(scene, a_name), find(scene, b_name)
    delta = {"to the left of": b.x - a.x, "to the right of": a.x - b.x, "above": b.y - a.y, "below": a.y - b.y}[phrase]
    assert abs(delta) > RELATION_MARGIN, "relation asked about objects that are too close along its axis"
    return delta > 0


def oracle(scene: Scene, qa: QA) -> str:
    """The answer recomputed from the question text (follow-ups included) and the object coordinates."""
    q = qa.question
    yes_no = ("Yes", "No")
    if qa.kind == "describe":
        names = [f"{'an' if o.colour[0] in 'aeiou' else 'a'} {o.colour} {o.shape}"
                 for o in sorted(scene.objects, key=lambda o: o.x)]
        n = len(names)
        listing = names[0] if n == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        return f"There {'is' if n == 1 else 'are'} {NUMBERS[n]} object{'s' * (n > 1)}: {listing}."
    if qa.kind == "count":
        if m := re.search(f"many {COLOUR} ", q):
            n = sum(o.colour == m[1] for o in scene.objects)
        elif m := re.search(f"many {PLURAL} ", q):
            n = sum(o.shape + ("es" if o.shape.endswith("s") else "s") == m[1] for o in scene.objects)
        else:
            n = len(scene.objects)
        return NUMBERS[n].capitalize() + "."
    if qa.kind == "colour":
        return unique(scene, "shape", re.search(f"the {SHAPE}\\?", q)[1]).colour.capitalize() + "."
    if qa.kind == "shape":
        shape = unique(scene, "colour", re.search(f"{COLOUR}(?: object| one)?\\?", q)[1]).shape
        return ("An " if shape[0] in "aeiou" else "A ") + shape + "."
    if qa.kind == "exist":
        colour, shape = re.search(f"an? {COLOUR} {SHAPE}\\b", q).groups()
        return yes_no[all((o.colour, o.shape) != (colour, shape) for o in scene.objects)]
    if m := TRUE_FALSE.fullmatch(q):
        return ("True", "False")[not spatial_truth(scene, *m.groups())]
    m = re.fullmatch(r"Is the (.+?) (?:located )?(to the left of|to the right of|above|below) the (.+)\?", q)
    return yes_no[not spatial_truth(scene, *m.groups())]


def test_eval_set_is_deterministic_cycles_kinds_and_differs_from_training():
    first = make_eval_set(7, 60)
    assert first == make_eval_set(7, 60)
    assert first != make_eval_set(8, 60)
    assert [qa.kind for _, qa in first] == list(QA_KINDS) * 10
    train_scenes = [scene for scene, _ in itertools.islice(iter_training_examples(7), 60)]
    assert not {s for s, _ in first} & set(train_scenes)


def test_training_stream_is_deterministic():
    def take(seed: int) -> list:
        return list(itertools.islice(iter_training_examples(seed), 30))

    assert take(1) == take(1)
    assert take(1) != take(2)
    assert {len(conversation) for _, conversation in take(1)} <= {1, 2, 3, 4}


def test_eval_answers_match_geometry():
    for scene, qa in make_eval_set(0, 1800):
        assert qa.answer == oracle(scene, qa), (scene, qa)


def test_conversations_match_geometry_and_follow_ups_stay_in_kind():
    follow_ups = 0
    for scene, conversation in itertools.islice(iter_training_examples(0), 1500):
        assert len({qa.question for qa in conversation}) == len(conversation)
        for previous, qa in zip([None, *conversation[:-1]], conversation, strict=True):
            is_follow_up = qa.question.startswith(("And ", "What about "))
            if is_follow_up:
                follow_ups += 1
                assert previous is not None and previous.kind == qa.kind
            assert qa.answer == oracle(scene, qa), (scene, qa)
    assert follow_ups > 50


def test_sample_conversation_respects_turns():
    rng = np.random.default_rng(0)
    for n_turns in (1, 3, 6):
        scene = sample_scene(rng, n_objects=3)
        conversation = sample_conversation(scene, rng, n_turns)
        assert len(conversation) == n_turns
        assert all(isinstance(qa, QA) and qa.kind in QA_KINDS for qa in conversation)


def test_closed_set_answers_are_exact_words_and_balanced():
    items = make_eval_set(1, 4000, kinds=("exist", "spatial"))
    by_group = collections.defaultdict(list)
    for _, qa in items:
        assert qa.choices == {"exist": ("Yes", "No"), "yes-no": ("Yes", "No"), "true-false": ("True", "False")}[
            qa.kind if qa.kind == "exist" else qa.tags[0]]
        positive = qa.answer == qa.choices[0]
        by_group[qa.kind].append(positive)
        by_group[qa.tags].append(positive)
    for group in ("exist", "spatial"):
        assert 0.46 < np.mean(by_group[group]) < 0.54, group
    for group, answers in by_group.items():
        assert len(answers) > 100 and 0.38 < np.mean(answers) < 0.62, group
    assert {tags for tags in by_group if isinstance(tags, tuple)} == {
        *(("random",), ("popular",), ("adversarial",)),
        *((fmt, rel) for fmt in ("yes-no", "true-false") for rel in ("left of", "right of", "above", "below")),
    }


def test_open_answers_are_not_closed_set():
    for _, qa in make_eval_set(2, 120, kinds=("describe", "count", "colour", "shape")):
        assert qa.choices is None and qa.answer.endswith(".")


def test_pope_negatives_follow_their_split():
    for scene, qa in make_eval_set(3, 1500, kinds=("exist",)):
        if qa.answer == "Yes":
            continue
        colour, shape = re.search(f"an? {COLOUR} {SHAPE}\\b", qa.question).groups()
        present = {(o.shape, o.colour) for o in scene.objects}
        (split,) = qa.tags
        if split == "popular":
            absent = sorted((w, pair) for pair, w in PAIR_WEIGHTS.items() if pair not in present)
            assert (shape, colour) in [pair for _, pair in absent[-3:]]
        if split == "adversarial":
            assert any(shape == s or colour == c for s, c in present)
