"""Questions for the outside check, worded apart from the training grammar (`cobra_app.demo.phrasing`): the way
people who never saw it ask, the issue's own examples among them. Answers are worked out here from the picture's
geometry, in the demo model's reply formats. `overlap_with_training` says how many of these wordings the grammar
happens to contain as well.
"""

from __future__ import annotations

import numpy as np

from cobra_app.demo.conversations import QA
from cobra_app.demo.outside.render import NAMED, SHAPE_NAMES, Picture, random_picture
from cobra_app.demo.phrasing import GRAMMAR, templates

WORDINGS: dict[str, tuple[str, ...]] = {
    "exist": (
        "Is {obj} present?", "Do I see {obj} in this photo?", "Would you find {obj} anywhere in this picture?",
        "Is {obj} somewhere in the scene?", "Can {obj} be found here?", "Does this picture have {obj} in it?",
        "Please check: is there {obj}?", "I'm looking for {obj}. Is there one?", "Has the image got {obj}?",
        "Are any {objs} visible?", "is there {obj} in this scene", "Is there {obj} drawn here?",
    ),
    "spatial/yes-no": (
        "Is the {a} {rel} the {b}?", "Is the {a} positioned {rel} the {b}?", "Does the {a} lie {rel} the {b}?",
        "Would you say the {a} is {rel} the {b}?", "Looking at the picture, is the {a} {rel} the {b}?",
        "Is the {a} {rel} the {b} in this picture?", "Can you tell if the {a} is {rel} the {b}?",
        "Am I right that the {a} is {rel} the {b}?", "Is the {a} placed {rel} the {b}?",
        "Is the {a} drawn {rel} the {b}?",
    ),
    "spatial/true-false": (
        "True or false: the {a} is {rel} the {b}.", "The {a} is {rel} the {b}. True or false?",
        "Is it true that the {a} is {rel} the {b}? Answer true or false.",
        "Say true or false: the {a} sits {rel} the {b}.",
        "Evaluate this claim as true or false: the {a} is {rel} the {b}.",
        "Here is a statement: the {a} is {rel} the {b}. Is it true or false?", "True/False: the {a} is {rel} the {b}.",
        "Claim: the {a} is {rel} the {b}. True or false?", "Respond True or False. The {a} is {rel} the {b}.",
        "The {a} can be seen {rel} the {b} - true or false?",
    ),
    "colour": (
        "Tell me the colour of the {shape}.", "What colour has the {shape}?", "The {shape} - what colour is it?",
        "Which colour would you say the {shape} is?", "What is the color of the {shape} in this picture?",
        "What colour is the {shape} in the photo?", "Could you name the colour of the {shape}?",
        "I'd like to know the colour of the {shape}.", "How is the {shape} coloured?",
        "In what colour is the {shape} drawn?",
    ),
    "shape": (
        "What shape is the {colour} thing?", "Which shape is the {colour} one?",
        "The {colour} object - which shape is it?",
        "What shape has the {colour} object got?", "What's the {colour} shape?", "What kind of object is {colour}?",
        "Tell me what shape the {colour} object is.", "Which of the shapes is {colour}?",
        "What is the form of the {colour} object?", "what shape is the {colour} item",
    ),
    "count/all": (
        "How many things are in this picture?", "How many shapes are in the picture?", "How many objects can be seen?",
        "What's the total number of shapes?", "Count all the shapes in the image.", "How many objects do you count?",
        "Tell me the number of objects.", "How many items does this image contain?",
    ),
    "count/colour": (
        "How many {colour} things are in this picture?", "How many {colour} shapes do you count?",
        "Count the {colour} ones.", "What number of objects are {colour}?",
    ),
    "count/shape": (
        "How many {shapes} are in this picture?", "How many {shapes} do you count?",
        "Count how many {shapes} there are.",
        "What's the number of {shapes} here?",
    ),
    "describe": (
        "What objects are in this picture?", "Can you describe what's in the image?", "Describe everything you see.",
        "What shapes are shown here?", "Please list all the objects.", "Give me a description of this picture.",
        "What's in the picture?", "Tell me about the picture.", "Name the objects in the image.",
        "What is shown in this image?",
    ),
}
RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of", "on the left side of"),
    "right of": ("to the right of", "right of", "on the right side of"),
    "above": ("above", "higher than", "over"),
    "below": ("below", "under", "lower than", "underneath"),
}
COUNTS = ("zero", "one", "two", "three", "four")
MARGIN = 0.1  # a relation is asked only when the centres are this far apart along its axis
KINDS = ("describe", "count", "colour", "shape", "exist", "spatial")


def _a(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def ask_outside(kind: str, picture: Picture, rng: np.random.Generator) -> QA | None:
    """A question of `kind` about `picture` with its answer, or None when this picture cannot be asked it."""
    things = picture.things
    names = [f"{t.colour} {t.shape}" for t in things]
    if kind == "describe":
        listing = [_a(f"{t.colour} {t.shape}") for t in sorted(things, key=lambda t: t.cx)]
        joined = listing[0] if len(listing) == 1 else ", ".join(listing[:-1]) + " and " + listing[-1]
        head = "There is one object" if len(things) == 1 else f"There are {COUNTS[len(things)]} objects"
        return QA(_pick(rng, WORDINGS["describe"]), f"{head}: {joined}.", kind)
    if kind == "count":
        target = _pick(rng, ("all", "colour", "shape"))
        if target == "all":
            return QA(_pick(rng, WORDINGS["count/all"]), COUNTS[len(things)].capitalize() + ".", kind, ("all",))
        value = _pick(rng, list(NAMED) if target == "colour" else list(SHAPE_NAMES))
        n = sum(getattr(t, target) == value for t in things)
        slot = {"colour": value} if target == "colour" else {"shapes": _plural(value)}
        return QA(_pick(rng, WORDINGS[f"count/{target}"]).format(**slot), COUNTS[n].capitalize() + ".", kind, (target,))
    if kind in ("colour", "shape"):
        other = "shape" if kind == "colour" else "colour"
        unique = [t for t in things if sum(getattr(u, other) == getattr(t, other) for u in things) == 1]
        if not unique:
            return None
        t = _pick(rng, unique)
        answer = t.colour.capitalize() + "." if kind == "colour" else _a(t.shape).capitalize() + "."
        return QA(_pick(rng, WORDINGS[kind]).format(**{other: getattr(t, other)}), answer, kind)
    if kind == "exist":
        present = rng.random() < 0.5
        missing = [f"{c} {s}" for s in SHAPE_NAMES for c in NAMED if f"{c} {s}" not in names]
        name = _pick(rng, names if present else missing)
        colour, shape = name.split()
        question = _pick(rng, WORDINGS["exist"]).format(obj=_a(name), objs=f"{colour} {_plural(shape)}")
        return QA(question, "Yes" if present else "No", kind, ("random",))
    return _ask_spatial(things, rng)


def _ask_spatial(things, rng: np.random.Generator) -> QA | None:
    truth = rng.random() < 0.5
    options = []
    for a in things:
        for b in things:
            if a is b:
                continue
            for rel, (axis, sign) in {"left of": ("cx", 1), "right of": ("cx", -1), "above": ("cy", 1),
                                      "below": ("cy", -1)}.items():
                delta = sign * (getattr(b, axis) - getattr(a, axis))
                if abs(delta) > MARGIN and (delta > 0) == truth:
                    options.append((a, b, rel))
    if not options:
        return None
    a, b, rel = _pick(rng, options)
    style = "yes-no" if rng.random() < 0.5 else "true-false"
    question = _pick(rng, WORDINGS[f"spatial/{style}"]).format(
        a=f"{a.colour} {a.shape}", b=f"{b.colour} {b.shape}", rel=_pick(rng, RELATION_WORDS[rel]))
    answer = ("Yes" if truth else "No") if style == "yes-no" else ("True" if truth else "False")
    return QA(question, answer, "spatial", (style, rel))


def make_outside_set(seed: int, n: int) -> list[tuple[Picture, QA]]:
    """`n` items cycling through the question kinds, each on its own picture."""
    rng = np.random.default_rng([seed, 23])
    items: list[tuple[Picture, QA]] = []
    while len(items) < n:
        picture = random_picture(rng)
        qa = ask_outside(KINDS[len(items) % len(KINDS)], picture, rng)
        if qa is not None:
            items.append((picture, qa))
    return items


def overlap_with_training() -> tuple[int, int]:
    """(wordings here that are also templates of the training grammar's train split, wordings here)."""
    trained = {t for key in GRAMMAR for t in templates(key, "train")}
    mine = [w for group in WORDINGS.values() for w in group]
    return sum(w in trained for w in mine), len(mine)
