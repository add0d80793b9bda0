"""The held-out evaluation sets of the demo model and the accuracy each must reach (issues 4 and 23).

- original: the original templates on scenes in the original look: the items every evaluation since issue 4 used
  (`make_eval_set(seed)` draws them unchanged), so its figures compare with every earlier model's;
- templates: the grammar's held-out templates, never trained on, with people's surface variation (lower case, no
  question mark, typos), on scenes in the original look;
- rendering: the original templates on the held-out rendering family (drop shadows on striped backgrounds);
- swapped: existence questions where colour and shape must be found on the same object (beside a red square and a
  blue circle, "Is there a red circle?"), original templates and look: the binding that POPE's splits rarely test;
- absent: colour and shape questions about an object that is not there ("There is no triangle."), half in the
  original templates, half in held-out ones;
- outside: a second renderer and wordings written apart from the grammar (`cobra_app.demo.outside`), an estimate of
  an independent test; no targets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from cobra_app.demo.conversations import QA, make_eval_set
from cobra_app.demo.outside.questions import make_outside_set
from cobra_app.demo.outside.render import draw
from cobra_app.demo.phrasing import HELD_OUT, Phrasing
from cobra_app.demo.scenes import render

DEFAULT_SEED = 2024  # training uses seed 0 (and the monitor during training 777)
ABSENT = Phrasing("held-out", original_share=0.5, noise=True, absent_share=1.0)
SWAPS = Phrasing(swap_share=1.0)


@dataclass(frozen=True)
class EvalSet:
    """A named evaluation set: how to draw its `n` items from a seed, how to draw an item's picture, and the minimum
    accuracy of each result group ("exist", "spatial / yes-no", "all", ...)."""

    name: str
    title: str
    make: Callable[[int, int], list[tuple[Any, QA]]]
    image_of: Callable[[Any], Image.Image] = render
    targets: dict[str, float] = field(default_factory=dict)


EVAL_SETS: dict[str, EvalSet] = {s.name: s for s in (
    EvalSet("original", "Original templates, original look", lambda seed, n: make_eval_set(seed, n),
            targets={"exist": 0.98, "spatial": 0.90, "colour": 0.99, "shape": 0.99, "count": 0.95,
                     "describe": 0.90}),
    EvalSet("templates", "Held-out templates (with typos, lower case, no question mark), original look",
            lambda seed, n: make_eval_set(seed, n, phrasing=HELD_OUT),
            targets={"exist": 0.95, "spatial / true-false": 0.90, "spatial / yes-no": 0.90, "colour": 0.95,
                     "shape": 0.95, "count": 0.90}),
    EvalSet("rendering", "Held-out rendering family (drop shadows, striped backgrounds), original templates",
            lambda seed, n: make_eval_set(seed, n, rendering="held-out"), targets={"exist": 0.93, "spatial": 0.88}),
    EvalSet("swapped", "Existence of recombined colours and shapes, original templates and look",
            lambda seed, n: make_eval_set(seed, n, kinds=("exist",), phrasing=SWAPS), targets={"exist": 0.95}),
    EvalSet("absent", "Colour and shape questions about absent objects", lambda seed, n: make_eval_set(
        seed, n, kinds=("colour", "shape"), phrasing=ABSENT), targets={"all": 0.90}),
    EvalSet("outside", "Outside check: a second renderer, wordings written apart from the grammar (no targets)",
            make_outside_set, image_of=draw),
)}
