"""Questions and answers about a synthetic scene, with answers checked against its geometry.

Each asker below turns (scene, rng, phrasing) into a `Fact`: the grammar key of the question (whose templates live in
`cobra_app.demo.phrasing`), its slots, the answer and tags, or None when the question cannot be asked unambiguously of
this scene. Closed-set answers (Yes/No, True/False) are drawn by a fair coin *before* the question is chosen, so both
answers are equally likely whatever the scene. With the original phrasing (`phrasing.ORIGINAL`) every draw is the one
the first demo model was trained and evaluated with, so `make_eval_set(seed)` gives the same items as it always did.
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from cobra_app.demo.phrasing import ORIGINAL, RELATION_SYNONYMS, TRAINING, Phrasing, perturb, templates
from cobra_app.demo.scenes import (
    COLOURS,
    PAIR_WEIGHTS,
    PAIRS,
    RELATIONS,
    SHAPES,
    Scene,
    relation_holds,
    sample_scene,
    sample_styled_scene,
    sample_training_scene,
)

CLOSED_SETS: tuple[tuple[str, str], ...] = (("Yes", "No"), ("True", "False"))
NUMBERS = ("zero", "one", "two", "three", "four")
RELATION_PHRASES = {rel: phrases[0] for rel, phrases in RELATION_SYNONYMS.items()}  # the original wording
POPE_SPLITS = ("random", "popular", "adversarial")
POPULAR_TOP_K = 3  # "popular" negatives are drawn from the K most frequent (shape, colour) pairs absent from the scene
SWAPPED = "swapped"  # existence negatives that recombine a present colour with another object's shape


@dataclass(frozen=True)
class QA:
    """One user question and the exact reply the model should give."""

    question: str
    answer: str
    kind: str  # one of QA_KINDS
    tags: tuple[str, ...] = ()  # sub-type: count target, POPE split, spatial format and relation, "absent"
    follow_up: bool = False  # a short follow-up ("And the square?") that only makes sense after an earlier turn

    @property
    def choices(self) -> tuple[str, str] | None:
        """The closed set (positive, negative) the answer belongs to, or None for an open answer."""
        return next((pair for pair in CLOSED_SETS if self.answer in pair), None)


@dataclass(frozen=True)
class Fact:
    """What an asker found askable: the question's grammar key, the values of its slots, the answer and its tags."""

    key: str  # a key of `phrasing.GRAMMAR` ("exist", "count/colour", "spatial/yes-no", ...)
    slots: dict[str, str]
    answer: str
    tags: tuple[str, ...] = ()
    relation: str | None = None  # a spatial question's relation, whose wording the grammar varies


def with_article(noun_phrase: str) -> str:
    """The noun phrase with its indefinite article: "a red circle", "an orange square"."""
    return f"{'an' if noun_phrase[0] in 'aeiou' else 'a'} {noun_phrase}"


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "ch", "sh")) else "s")


T = TypeVar("T")


def _choice(rng: np.random.Generator, items: Sequence[T]) -> T:
    return items[rng.integers(len(items))]


def _yes(rng: np.random.Generator) -> bool:
    return bool(rng.random() < 0.5)


def _absent(rng: np.random.Generator, phrasing: Phrasing) -> bool:
    """Whether to ask about a missing object (never drawn when the phrasing asks about present ones only)."""
    return bool(phrasing.absent_share) and bool(rng.random() < phrasing.absent_share)


def ask_describe(scene: Scene, rng: np.random.Generator, phrasing: Phrasing) -> Fact:
    """Every object, left to right."""
    names = [with_article(o.name) for o in scene.left_to_right()]
    listing = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    verb, noun = ("is", "object") if len(names) == 1 else ("are", "objects")
    return Fact("describe", {}, f"There {verb} {NUMBERS[len(names)]} {noun}: {listing}.")


def ask_count(scene: Scene, rng: np.random.Generator, phrasing: Phrasing) -> Fact:
    """All objects, objects of one colour, or objects of one shape (zero allowed for the last two)."""
    target = _choice(rng, ("all", "colour", "shape"))
    if target == "all":
        return Fact("count/all", {}, NUMBERS[len(scene.objects)].capitalize() + ".", (target,))
    present = [getattr(o, target) for o in scene.objects]
    value = _choice(rng, present if _yes(rng) else list({"colour": COLOURS, "shape": SHAPES}[target]))
    slots = {"colour": value} if target == "colour" else {"shapes": plural(value)}
    return Fact(f"count/{target}", slots, NUMBERS[present.count(value)].capitalize() + ".", (target,))


def ask_colour(scene: Scene, rng: np.random.Generator, phrasing: Phrasing) -> Fact | None:
    """The colour of an object whose shape is unique in the scene; or, asked of a shape that is not there, that it
    is not there."""
    shapes = [o.shape for o in scene.objects]
    if _absent(rng, phrasing):
        shape = _choice(rng, [s for s in SHAPES if s not in shapes])
        return Fact("colour", {"shape": shape}, f"There is no {shape}.", ("absent",))
    candidates = [o for o in scene.objects if shapes.count(o.shape) == 1]
    if not candidates:
        return None
    o = _choice(rng, candidates)
    return Fact("colour", {"shape": o.shape}, o.colour.capitalize() + ".")


def ask_shape(scene: Scene, rng: np.random.Generator, phrasing: Phrasing) -> Fact | None:
    """The shape of an object whose colour is unique in the scene; or, asked of a colour that is not there, that no
    object has it."""
    colours = [o.colour for o in scene.objects]
    if _absent(rng, phrasing):
        colour = _choice(rng, [c for c in COLOURS if c not in colours])
        return Fact("shape", {"colour": colour}, f"There is no {colour} object.", ("absent",))
    candidates = [o for o in scene.objects if colours.count(o.colour) == 1]
    if not candidates:
        return None
    o = _choice(rng, candidates)
    return Fact("shape", {"colour": o.colour}, with_article(o.shape).capitalize() + ".")


def absent_pairs(scene: Scene, split: str) -> list[tuple[str, str]]:
    """Negative (shape, colour) pairs for a POPE split, or SWAPPED: a present shape in the colour of another object."""
    present = {(o.shape, o.colour) for o in scene.objects}
    absent = [pair for pair in PAIRS if pair not in present]
    if split == "popular":
        return sorted(absent, key=lambda pair: -PAIR_WEIGHTS[pair])[:POPULAR_TOP_K]
    if split == "adversarial":  # a present shape in another colour, or a present colour on another shape
        return [(s, c) for s, c in absent if any(s == o.shape or c == o.colour for o in scene.objects)]
    if split == SWAPPED:  # both words name something in the scene, but not the same object
        shapes, colours = {o.shape for o in scene.objects}, {o.colour for o in scene.objects}
        return [(s, c) for s, c in absent if s in shapes and c in colours]
    return absent


def ask_exist(scene: Scene, rng: np.random.Generator, phrasing: Phrasing) -> Fact:
    """POPE-style existence: a present object, or an absent one sampled by the random/popular/adversarial split; with
    probability `phrasing.swap_share`, when the scene has one, the SWAPPED split instead (its positives tagged alike:
    questions about a scene where colour and shape must be found on the same object)."""
    split = _choice(rng, POPE_SPLITS)
    yes = _yes(rng)
    if phrasing.swap_share and rng.random() < phrasing.swap_share and absent_pairs(scene, SWAPPED):
        split = SWAPPED
    shape, colour = _choice(rng, [(o.shape, o.colour) for o in scene.objects] if yes else absent_pairs(scene, split))
    slots = {"obj": with_article(f"{colour} {shape}"), "objs": f"{colour} {plural(shape)}"}
    return Fact("exist", slots, "Yes" if yes else "No", (split,))


def ask_spatial(scene: Scene, rng: np.random.Generator, phrasing: Phrasing) -> Fact | None:
    """VSR-style relation between two objects, as a Yes/No question or a True/False statement."""
    candidates = [(a, b, rel, holds) for a in scene.objects for b in scene.objects if a is not b
                  for rel in RELATIONS if (holds := relation_holds(a, b, rel)) is not None]
    if not candidates:
        return None
    yes = _yes(rng)
    a, b, rel, _ = _choice(rng, [c for c in candidates if c[3] == yes])  # each pair/axis gives one True, one False
    slots = {"a": a.name, "rel": RELATION_PHRASES[rel], "b": b.name}
    if _yes(rng):
        return Fact("spatial/yes-no", slots, "Yes" if yes else "No", ("yes-no", rel), rel)
    return Fact("spatial/true-false", slots, "True" if yes else "False", ("true-false", rel), rel)


ASKERS: dict[str, Callable[[Scene, np.random.Generator, Phrasing], Fact | None]] = {
    "describe": ask_describe, "count": ask_count, "colour": ask_colour, "shape": ask_shape, "exist": ask_exist,
    "spatial": ask_spatial,
}
QA_KINDS: tuple[str, ...] = tuple(ASKERS)
# short follow-ups, used in conversations right after a question of the same kind (same slots as the asker's templates)
FOLLOW_UPS: dict[str, tuple[str, ...]] = {
    "colour": ("And the {shape}?", "What about the {shape}?"),
    "shape": ("And the {colour} one?", "What about the {colour} one?"),
    "exist": ("And {obj}?", "What about {obj}?"),
}
# relative frequency of each kind in training conversations (the recipe's default mix); existence, whose one-token
# Yes/No must be read from the right object, gets the most, descriptions the next (docs/DEMO_MODEL.md sessions 24-27)
KIND_WEIGHTS: dict[str, float] = {"describe": 4, "count": 2, "colour": 2, "shape": 2, "exist": 6.5, "spatial": 3.5}
FOLLOW_UP_PROB = 0.5
MAX_TURNS = 4
RENDERINGS = ("original", "train", "held-out")  # scene looks: `sample_scene`, or a `sample_styled_scene` family
TRAIN_STREAM, EVAL_STREAM = 0, 1  # seed-sequence keys: the same integer seed never yields the same scenes in both


def ask(kind: str, scene: Scene, rng: np.random.Generator, follow_up: bool = False,
        phrasing: Phrasing = ORIGINAL) -> QA | None:
    """One question of `kind` about `scene` (phrased as a short follow-up if asked), worded as `phrasing` says, or
    None if it cannot be asked."""
    fact = ASKERS[kind](scene, rng, phrasing)
    if fact is None:
        return None
    slots = fact.slots
    if follow_up:
        template = _choice(rng, FOLLOW_UPS[kind])
    elif phrasing.split == "original" or (phrasing.original_share and rng.random() < phrasing.original_share):
        template = _choice(rng, templates(fact.key, "original"))
    else:
        template = _choice(rng, templates(fact.key, phrasing.split))
        if fact.relation:
            slots = {**slots, "rel": _choice(rng, RELATION_SYNONYMS[fact.relation])}
    question = template.format(**slots)
    if phrasing.noise:
        question = perturb(question, rng)
    return QA(question, fact.answer, kind, fact.tags, follow_up)


def sample_conversation(scene: Scene, rng: np.random.Generator, n_turns: int, phrasing: Phrasing = ORIGINAL,
                        kind_weights: Mapping[str, float] = KIND_WEIGHTS) -> list[QA]:
    """Up to `n_turns` distinct questions of mixed kinds, drawn in proportion to `kind_weights` (fewer only if the
    scene runs out of askable ones)."""
    kinds, weights = list(kind_weights), np.array(list(kind_weights.values()), dtype=float)
    turns: list[QA] = []
    for _ in range(20 * n_turns):
        if len(turns) == n_turns:
            break
        kind = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
        follow_up = bool(turns) and turns[-1].kind == kind and kind in FOLLOW_UPS and rng.random() < FOLLOW_UP_PROB
        qa = ask(kind, scene, rng, follow_up, phrasing)
        if qa is not None and all(qa.question != t.question for t in turns):
            turns.append(qa)
    return turns


def sample_eval_scene(rng: np.random.Generator, rendering: str) -> Scene:
    """A scene in the original look or in a style of a rendering family (RENDERINGS)."""
    if rendering not in RENDERINGS:
        raise ValueError(f"unknown rendering {rendering!r}; known: {RENDERINGS}")
    return sample_scene(rng) if rendering == "original" else sample_styled_scene(rng, rendering)


def make_eval_set(seed: int, n: int, kinds: Sequence[str] = QA_KINDS, phrasing: Phrasing = ORIGINAL,
                  rendering: str = "original") -> list[tuple[Scene, QA]]:
    """`n` single-turn items, cycling through `kinds`, each on its own scene (redrawn until the kind can be asked)."""
    rng = np.random.default_rng([seed, EVAL_STREAM])
    items: list[tuple[Scene, QA]] = []
    while len(items) < n:
        scene = sample_eval_scene(rng, rendering)
        qa = ask(kinds[len(items) % len(kinds)], scene, rng, phrasing=phrasing)
        if qa is not None:
            items.append((scene, qa))
    return items


def iter_training_examples(seed: int, phrasing: Phrasing = TRAINING,
                           kind_weights: Mapping[str, float] = KIND_WEIGHTS) -> Iterator[tuple[Scene, list[QA]]]:
    """Endless stream of (scene, conversation of 1-4 turns): scenes in the original look or a "train"-family style,
    questions of the kinds mixed as `kind_weights` says, worded by `phrasing` (never a held-out template)."""
    if phrasing.split == "held-out":
        raise ValueError("training never reads held-out templates")
    rng = np.random.default_rng([seed, TRAIN_STREAM])
    while True:
        scene = sample_training_scene(rng)
        yield scene, sample_conversation(scene, rng, int(rng.integers(1, MAX_TURNS + 1)), phrasing, kind_weights)
