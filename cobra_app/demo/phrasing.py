"""How questions are worded: a grammar of many phrasings per question kind, a fixed set of them held out of training,
and the surface variation people add (lower case, no question mark, small typos).

A pattern like "[Is there|Do you see] {obj}[ in the image|]?" expands to every choice of its bracketed alternatives
(the empty alternative drops the part); the expansions of a key are its templates. A stable hash puts about one
template in six of every key in the held-out split, which training never draws from. The slots are filled by the
askers of `cobra_app.demo.conversations`: {obj} "a red circle", {objs} "red circles", {shape}, {shapes}, {colour},
{a} / {b} object names, {rel} a relation phrase, {clause} "the red circle is above the blue square" and {statement}
the same as a sentence.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from functools import cache

import numpy as np

from cobra_app.demo.scenes import COLOURS, SHAPES

SPLITS = ("original", "train", "held-out")
HELD_OUT_EVERY = 6  # about one template in this many is held out of training
C = "[colour|color]"
TRUE_FALSE_PROMPT = ('Based on the image, is this statement "True" or "False"? {statement}\n'
                     'Respond with "True" or "False" directly.')
# the templates of the first demo model, which every evaluation before issue 23 used (always trained on)
ORIGINAL_TEMPLATES: dict[str, tuple[str, ...]] = {
    "describe": ("Describe the image.", "What is in the image?", "What do you see?", "Describe this picture.",
                 "List the objects in the image."),
    "count/all": ("How many objects are there?", "How many objects are in the image?", "How many shapes can you see?",
                  "Count the objects."),
    "count/colour": ("How many {colour} objects are there?", "How many {colour} shapes are in the image?"),
    "count/shape": ("How many {shapes} are there?", "How many {shapes} are in the image?"),
    "colour": ("What colour is the {shape}?", "What is the colour of the {shape}?", "Which colour is the {shape}?"),
    "shape": ("What shape is the {colour} object?", "What is the shape of the {colour} object?",
              "Which shape is {colour}?"),
    "exist": ("Is there {obj} in the image?", "Is there {obj}?", "Do you see {obj}?", "Does the image contain {obj}?"),
    "spatial/yes-no": ("Is the {a} {rel} the {b}?", "Is the {a} located {rel} the {b}?"),
    "spatial/true-false": (TRUE_FALSE_PROMPT.format(statement="The {a} is {rel} the {b}."),),
}

GRAMMAR: dict[str, tuple[str, ...]] = {
    "describe": (
        "Describe the [image|picture|scene][ for me|].", "[What is|What's] in [the|this] [image|picture]?",
        "What do you see[ in the image| in the picture|]?", "What can you see[ in the image| in the picture|]?",
        "List the [objects|shapes|things] [in the image|in the picture|you see].",
        "List everything [in the image|you see|in the picture].", "Tell me what you see[ in the image|].",
        "Tell me what is in the [image|picture].", "Give [a|me a] description of the [image|picture|scene].",
        "Which [objects|shapes|things] are [there|in the image|in the picture]?",
        "What [objects|shapes|things] are [shown|visible|there]?",
        "[Can you|Could you|Please] describe the [image|picture].", "What does the [image|picture] show?",
        "Describe this [image|picture].", "Name all the [objects|shapes] you see.",
    ),
    "count/all": (
        "How many [objects|shapes|things|items] are [there|in the image|in the picture|in this picture|shown|visible]?",
        "How many [objects|shapes|things] [can|do] you see?",
        "Count the [objects|shapes|things|items][ in the image| in the picture|].",
        "What is the number of [objects|shapes|things][ in the image|]?",
        "Tell me how many [objects|shapes|things] there are[ in the picture|].",
        "How many [objects|shapes|things] does the [image|picture] [contain|show|have]?",
        "[Number|Total number] of [objects|shapes]?", "How many [objects|shapes|things] are there in total?",
    ),
    "count/colour": (
        "How many {colour} [objects|shapes|things|items] are [there|in the image|in the picture|shown|visible]?",
        "How many {colour} [objects|shapes|things] [can|do] you see?", "Count the {colour} [objects|shapes|things].",
        "What is the number of {colour} [objects|shapes|things]?",
        "Tell me how many {colour} [objects|shapes|things] there are.",
        "How many [objects|shapes|things] are {colour}?", "How many of the [objects|shapes] are {colour}?",
        "How many {colour} [objects|shapes] does the [image|picture] [contain|show|have]?",
    ),
    "count/shape": (
        "How many {shapes} are [there|in the image|in the picture|shown|visible]?",
        "How many {shapes} [can|do] you [see|spot|find]?", "Count the {shapes}[ in the image| in the picture|].",
        "What is the number of {shapes}[ in the image|]?", "Tell me how many {shapes} there are[ in the picture|].",
        "How many {shapes} does the [image|picture] [contain|show|have]?", "[Number|Total number] of {shapes}?",
    ),
    "colour": (
        f"What {C} is the {{shape}}[ in the image| in the picture|]?", f"[What is|What's] the {C} of the {{shape}}?",
        f"Which {C} is the {{shape}}?", f"[Tell me|Name|Identify] the {C} of the {{shape}}.",
        f"What {C} does the {{shape}} have?", f"The {{shape}} is what {C}?", f"Which {C} does the {{shape}} have?",
        f"Say what {C} the {{shape}} is.", f"What is the {{shape}}'s {C}?", "[Colour|Color] of the {shape}?",
        f"What {C} is the {{shape}} [painted|coloured|colored]?", f"Of what {C} is the {{shape}}?",
        f"Can you tell me the {C} of the {{shape}}?",
    ),
    "shape": (
        "What shape is the {colour} [object|thing|one|item][ in the image|]?",
        "[What is|What's] the shape of the {colour} [object|thing|one|item]?", "Which shape is {colour}?",
        "What is the {colour} [object|thing|shape]?",
        "[Tell me|Name|Identify] the shape of the {colour} [object|thing|one].",
        "What kind of shape is the {colour} [object|thing|one]?", "The {colour} [object|thing|one] is what shape?",
        f"Which shape has the {C} {{colour}}?", "What shape does the {colour} [object|thing] have?",
        "Which [object|shape|thing] is {colour}?", "Can you tell me the shape of the {colour} [object|thing]?",
    ),
    "exist": (
        "Is there {obj}[ in the image| in the picture| in this image| in this picture| here|]?",
        "[Do|Can] you see {obj}[ in the image| in the picture| here|]?",
        "Can you [spot|find] {obj}[ in the image| in the picture|]?",
        "Is {obj} [present|visible|shown][ in the image| in the picture|]?",
        "Are there any {objs}[ in the image| in the picture| here|]?", "[Do|Can] you see any {objs}?",
        "Does the [image|picture|scene] [contain|include|show|have] {obj}?",
        "Tell me whether there is {obj}[ in the image| in the picture|].", "Check if there is {obj}[ in the picture|].",
        "Look at the [image|picture]: is there {obj}?", "Is there {obj} anywhere[ in the image|]?",
        "Do you notice {obj}?", "Would you say there is {obj}[ in the image| in the picture|]?",
        "In the [image|picture], is there {obj}?", "Can {obj} be seen[ in the image| in the picture|]?",
        "Does {obj} appear[ in the image| in the picture|]?", "Any {objs}?", "Is there {obj} or not?",
    ),
    "spatial/yes-no": (
        "Is the {a} {rel} the {b}[ in the image| in the picture|]?",
        "Is the {a} [located|positioned|placed|situated|found] {rel} the {b}?",
        "Would you say [that |]the {a} is {rel} the {b}?", "Does the {a} [appear|sit|lie] {rel} the {b}?",
        "Is it the case that the {a} is {rel} the {b}?", "Tell me whether the {a} is {rel} the {b}.",
        "[In|Looking at] the [image|picture], is the {a} {rel} the {b}?", "Is the {a} {rel} the {b} or not?",
        "Check whether the {a} is {rel} the {b}.", "Can you confirm that the {a} is {rel} the {b}?",
        "Do you see the {a} {rel} the {b}?", "Is the {a} {rel} the {b}, yes or no?",
        "Yes or no: is the {a} {rel} the {b}?", "[Could|Can] you tell me [if|whether] the {a} is {rel} the {b}?",
        "Say whether the {a} is {rel} the {b}[ or not|].",
    ),
    "spatial/true-false": (
        'Based on the image, is this statement "True" or "False"? {statement}',
        "True or false: {statement}", "{statement} True or false?", "Is this statement true or false? {statement}",
        "Is the following true or false? {statement}", 'Answer "True" or "False": {statement}',
        "{statement} Is that true or false?", "True or false? {statement}", "Statement: {statement} True or false?",
        "Decide whether this is true or false: {statement}", "Tell me if this is true or false: {statement}",
        "Look at the [image|picture]. {statement} True or false?",
        "Based on the [image|picture], is it true or false that {clause}?", "Is it true or false that {clause}?",
        'Reply "True" or "False". {statement}',
    ),
}
# the statement a True/False template makes: {clause} as it is, {statement} as a sentence
CLAUSES = ("the {a} is {rel} the {b}", "the {a} is located {rel} the {b}", "the {a} sits {rel} the {b}",
           "the {a} lies {rel} the {b}")
# relation -> the phrases that say it before "the"; the first is the original one
RELATION_SYNONYMS: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of", "on the left of", "on the left side of", "to the left side of"),
    "right of": ("to the right of", "right of", "on the right of", "on the right side of", "to the right side of"),
    "above": ("above", "over", "higher than", "higher up than"),
    "below": ("below", "under", "beneath", "underneath", "lower than", "lower down than"),
}
LOWER_CASE_PROB, NO_PUNCTUATION_PROB, TYPO_PROB = 0.15, 0.2, 0.12


def expand(pattern: str) -> list[str]:
    """Every choice of a pattern's bracketed alternatives, with doubled spaces closed."""
    parts = re.split(r"\[([^\]]*)\]", pattern)  # even: literal text, odd: alternatives
    choices = [[p] if i % 2 == 0 else p.split("|") for i, p in enumerate(parts)]
    return [re.sub(r" {2,}", " ", "".join(combo)).strip() for combo in itertools.product(*choices)]


def _with_clauses(template: str) -> list[str]:
    """A template with its {statement} / {clause} slot written out in every CLAUSES wording."""
    if "{statement}" in template:
        return [template.replace("{statement}", clause[0].upper() + clause[1:] + ".") for clause in CLAUSES]
    if "{clause}" in template:
        return [template.replace("{clause}", clause) for clause in CLAUSES]
    return [template]


def _stable_rank(template: str) -> int:
    return int(hashlib.sha256(template.encode()).hexdigest(), 16)


@cache
def templates(key: str, split: str) -> tuple[str, ...]:
    """The templates of a grammar key in a split: "original" the ORIGINAL_TEMPLATES; "held-out" every
    HELD_OUT_EVERY-th other template in the order of a stable hash of the text; "train" the rest and the original
    ones."""
    if split == "original":
        return ORIGINAL_TEMPLATES[key]
    everything = sorted({t for pattern in GRAMMAR[key] for expanded in expand(pattern) for t in _with_clauses(expanded)}
                        | set(ORIGINAL_TEMPLATES[key]))
    ranked = sorted(set(everything) - set(ORIGINAL_TEMPLATES[key]), key=_stable_rank)
    held_out = set(ranked[::HELD_OUT_EVERY])
    return tuple(t for t in everything if (t in held_out) == (split == "held-out"))


@dataclass(frozen=True)
class Phrasing:
    """How an asker words its questions: `split` "original" (the original templates only), "train" or "held-out"
    (the grammar's templates of that split, or the original ones with probability `original_share`); `noise` adds
    the surface variation of `perturb`; `absent_share` is the share of colour and shape questions asked about an
    object that is not there; `swap_share` the share of existence questions about a recombination of the scene's
    colours and shapes ("a red circle" beside a red square and a blue circle; `conversations.ask_exist`)."""

    split: str = "original"
    original_share: float = 0.0
    noise: bool = False
    absent_share: float = 0.0
    swap_share: float = 0.0

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"unknown phrasing split {self.split!r}; known: {SPLITS}")


ORIGINAL = Phrasing()
# half the existence questions in training recombine the scene's colours and shapes: with POPE's splits alone (about
# 5% such negatives) models learned to check colour and shape apart (docs/DEMO_MODEL.md, session 14)
TRAINING = Phrasing("train", original_share=0.25, noise=True, absent_share=0.2, swap_share=0.5)
HELD_OUT = Phrasing("held-out", noise=True)


@cache
def protected_words() -> frozenset[str]:
    """Words a typo never touches: the ones a question is about (colours, shapes, relations) and the answers'."""
    words = {*COLOURS, *SHAPES, *(s + "s" for s in SHAPES), *(s + "es" for s in SHAPES), "true", "false", "yes", "no"}
    words |= {w for phrases in RELATION_SYNONYMS.values() for p in phrases for w in p.split()}
    return frozenset(words)


def _typo(word: str, rng: np.random.Generator) -> str:
    """One small slip in a word: two neighbouring letters swapped, a letter dropped or a letter doubled."""
    i = int(rng.integers(len(word) - 1))
    kind = int(rng.integers(3))
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:
        return word[:i] + word[i + 1 :]
    return word[: i + 1] + word[i] + word[i + 1 :]


def perturb(question: str, rng: np.random.Generator) -> str:
    """People's surface variation: sometimes all lower case, no final punctuation, or a typo in one word of four or
    more letters that the question is not about."""
    if rng.random() < TYPO_PROB:
        words = question.split(" ")
        protected = protected_words()
        candidates = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha() and w.lower() not in protected]
        if candidates:
            i = candidates[int(rng.integers(len(candidates)))]
            words[i] = _typo(words[i], rng)
            question = " ".join(words)
    if rng.random() < LOWER_CASE_PROB:
        question = question.lower()
    if rng.random() < NO_PUNCTUATION_PROB:
        question = question.rstrip("?.")
    return question
