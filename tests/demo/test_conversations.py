"""Spec: Q&A is seed-deterministic, agrees with the scene geometry whatever the wording, balances closed-set answers,
keeps the original evaluation items, and never trains on a held-out template.

The oracle below re-derives every answer from the question text (the words it is about: object names, shape and
colour words, relation phrases) and the object coordinates alone.
"""

import collections
import hashlib
import itertools
import re

import numpy as np
import pytest

from cobra_app.demo.conversations import (
    KIND_WEIGHTS,
    QA,
    QA_KINDS,
    iter_training_examples,
    make_eval_set,
    sample_conversation,
)
from cobra_app.demo.phrasing import GRAMMAR, HELD_OUT, RELATION_SYNONYMS, TRAINING, Phrasing, templates
from cobra_app.demo.scenes import COLOURS, PAIR_WEIGHTS, RELATION_MARGIN, SHAPES, Scene, sample_scene

NUMBERS = ["zero", "one", "two", "three", "four"]
COLOUR = "(" + "|".join(COLOURS) + ")"
SHAPE = "(" + "|".join(SHAPES) + ")"
PLURAL = "(" + "|".join(s + ("es" if s.endswith("s") else "s") for s in SHAPES) + ")"
PHRASES = [phrase for phrases in RELATION_SYNONYMS.values() for phrase in phrases]
RELATION = "(" + "|".join(sorted(PHRASES, key=len, reverse=True)) + ")"
SPATIAL = re.compile(f"{COLOUR} {SHAPE}.*? {RELATION} the {COLOUR} {SHAPE}", re.IGNORECASE)
ABSENT = Phrasing("train", absent_share=0.5, noise=True)
SLOT_PATTERNS = {"obj": f"an? {COLOUR} {SHAPE}", "objs": f"{COLOUR} {PLURAL}", "shape": SHAPE, "shapes": PLURAL,
                 "colour": COLOUR, "a": f"{COLOUR} {SHAPE}", "b": f"{COLOUR} {SHAPE}", "rel": RELATION}
ORIGINAL_ITEMS_DIGEST = "d34ab121bd9575f6"  # of make_eval_set(2024, 1200) as the first demo model's evaluation drew it


def template_regex(template: str) -> str:
    """A regex matching exactly the questions a template asks (its slots filled with any world's names)."""
    parts = re.split(r"\{(\w+)\}", template)
    return "".join(re.escape(p) if i % 2 == 0 else SLOT_PATTERNS[p] for i, p in enumerate(parts))


def find(scene: Scene, colour: str, shape: str):
    (obj,) = [o for o in scene.objects if (o.colour, o.shape) == (colour, shape)]
    return obj


def unique(scene: Scene, attr: str, value: str):
    matches = [o for o in scene.objects if getattr(o, attr) == value]
    assert len(matches) == 1, f"ambiguous or missing reference {value!r}"
    return matches[0]


def spatial_truth(scene: Scene, question: str) -> bool:
    colour_a, shape_a, phrase, colour_b, shape_b = SPATIAL.search(question).groups()
    a, b = find(scene, colour_a, shape_a), find(scene, colour_b, shape_b)
    relation = next(rel for rel, phrases in RELATION_SYNONYMS.items() if phrase.lower() in phrases)
    delta = {"left of": b.x - a.x, "right of": a.x - b.x, "above": b.y - a.y, "below": a.y - b.y}[relation]
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
        if m := re.search(f"\\b{COLOUR}\\b", q):
            n = sum(o.colour == m[1] for o in scene.objects)
        elif m := re.search(f"\\b{PLURAL}\\b", q):
            n = sum(o.shape + ("es" if o.shape.endswith("s") else "s") == m[1] for o in scene.objects)
        else:
            n = len(scene.objects)
        return NUMBERS[n].capitalize() + "."
    if qa.kind == "colour":
        shape = re.search(f"\\b{SHAPE}\\b", q)[1]
        if all(o.shape != shape for o in scene.objects):
            return f"There is no {shape}."
        return unique(scene, "shape", shape).colour.capitalize() + "."
    if qa.kind == "shape":
        colour = re.search(f"\\b{COLOUR}\\b", q)[1]
        if all(o.colour != colour for o in scene.objects):
            return f"There is no {colour} object."
        shape = unique(scene, "colour", colour).shape
        return ("An " if shape[0] in "aeiou" else "A ") + shape + "."
    if qa.kind == "exist":
        colour, shape = re.search(f"{COLOUR} {SHAPE}", q).groups()
        return yes_no[all((o.colour, o.shape) != (colour, shape) for o in scene.objects)]
    truth = spatial_truth(scene, q)
    return ("True", "False")[not truth] if "true" in q.lower() else yes_no[not truth]


def test_the_original_evaluation_set_is_the_one_every_earlier_model_was_evaluated_on():
    items = make_eval_set(2024, 1200)
    text = "\n".join(f"{[(o.shape, o.colour, o.size, o.x, o.y) for o in s.objects]}|{s.background}|{s.texture}|"
                     f"{s.grain}|{s.noise_seed}|{q.question}|{q.answer}|{q.tags}" for s, q in items)
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == ORIGINAL_ITEMS_DIGEST
    originals = {t for key in GRAMMAR for t in templates(key, "original")}
    assert all(any(re.fullmatch(template_regex(t), q.question) for t in originals) for _, q in items)


@pytest.mark.parametrize("split", ["train", "held-out"])
def test_questions_come_from_their_split_only(split):
    """Training never asks a held-out template; the held-out evaluation asks nothing else."""
    plain = Phrasing(split, original_share=TRAINING.original_share if split == "train" else 0.0)
    if split == "train":
        questions = [qa.question for _, conv in itertools.islice(iter_training_examples(3, plain), 600) for qa in conv
                     if not qa.follow_up]
    else:
        questions = [qa.question for _, qa in make_eval_set(3, 600, phrasing=plain)]
    split_regex = {name: re.compile("|".join(template_regex(t) for key in GRAMMAR for t in templates(key, name)))
                   for name in ("train", "held-out")}
    other = "held-out" if split == "train" else "train"
    assert all(split_regex[split].fullmatch(q) for q in questions)
    assert not any(split_regex[other].fullmatch(q) for q in questions)


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


@pytest.mark.parametrize("phrasing, rendering", [(Phrasing(), "original"), (HELD_OUT, "original"),
                                                 (Phrasing(), "held-out"), (ABSENT, "train")])
def test_eval_answers_match_geometry(phrasing, rendering):
    for scene, qa in make_eval_set(0, 900, phrasing=phrasing, rendering=rendering):
        assert qa.answer == oracle(scene, qa), (scene, qa)


def test_conversations_match_geometry_and_follow_ups_stay_in_kind():
    follow_ups = 0
    for scene, conversation in itertools.islice(iter_training_examples(0), 1500):
        assert len({qa.question for qa in conversation}) == len(conversation)
        for previous, qa in zip([None, *conversation[:-1]], conversation, strict=True):
            if qa.follow_up:
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


def test_training_asks_the_kinds_in_proportion_to_their_weights():
    def kinds(weights):
        return collections.Counter(qa.kind for _, conversation in itertools.islice(
            iter_training_examples(4, kind_weights=weights), 400) for qa in conversation)

    assert kinds({"exist": 1.0, "spatial": 1.0}).keys() == {"exist", "spatial"}
    default, more = kinds(KIND_WEIGHTS), kinds({**KIND_WEIGHTS, "exist": 20.0, "spatial": 1.0})
    assert more["exist"] / sum(more.values()) > 1.5 * default["exist"] / sum(default.values())
    assert more["spatial"] < default["spatial"]


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


def can_recombine(scene: Scene) -> bool:
    """Whether some shape of the scene in the colour of another of its objects is not one of its objects."""
    return len({(o.shape, p.colour) for o in scene.objects for p in scene.objects}) > len(scene.objects)


def test_swapped_negatives_recombine_the_scenes_colours_and_shapes_and_training_asks_half_its_existence_so():
    items = make_eval_set(4, 1500, kinds=("exist",), phrasing=Phrasing(swap_share=1.0))
    swapped = [(scene, qa) for scene, qa in items if qa.tags == ("swapped",)]
    for scene, qa in swapped:
        colour, shape = re.search(f"an? {COLOUR} {SHAPE}\\b", qa.question).groups()
        present = {(o.shape, o.colour) for o in scene.objects}
        assert ((shape, colour) in present) == (qa.answer == "Yes")
        if qa.answer == "No":  # the shape is there, and the colour, but on other objects
            assert shape in {s for s, _ in present} and colour in {c for _, c in present}
    # every scene where a recombination exists is asked in the swapped split; the others keep POPE's
    assert all(can_recombine(scene) == (qa.tags == ("swapped",)) for scene, qa in items)
    assert 0.4 < np.mean([qa.answer == "Yes" for _, qa in swapped]) < 0.6
    exist = [(scene, qa) for scene, conversation in itertools.islice(iter_training_examples(0), 4000)
             for qa in conversation if qa.kind == "exist" and not qa.follow_up]
    assert 0.42 < np.mean([qa.tags == ("swapped",) for scene, qa in exist if can_recombine(scene)]) < 0.58  # = 0.5
    assert make_eval_set(4, 300, kinds=("exist",)) == make_eval_set(4, 300, kinds=("exist",), phrasing=Phrasing(
        swap_share=0.0))  # a zero share draws nothing: the original items stay as they were
