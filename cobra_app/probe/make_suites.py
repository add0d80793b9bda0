"""Build the example probe suites on the demo scene world: `python -m cobra_app.probe.make_suites [--out DIR]`.

Deterministic: the same arguments always write the same JSONL text and the same image pixels.

- `images/scene_NNN.png`: N_SCENES scenes of 2-4 objects rendered at the demo model's 64 px (shared by both suites).
- `spatial.jsonl` (VSR-style): statements "The {a} is {relation} the {b}." scored True/False (the runner wraps them in
  the VSR prompt); at most one statement per relation per scene, True and False kept balanced within each relation;
  one category per relation ("left of", "right of", "above", "below"). Only relations with a clear margin are asked
  (`cobra_app.demo.scenes.relation_holds`).
- `existence.jsonl` (POPE-style): "Is there a {colour} {shape} in the image?" scored Yes/No. Per scene, up to three
  present objects are the positives (the same ones in every split, as POPE does), and as many absent objects are
  drawn per split: `random` (any absent pair), `popular` (the most frequent absent pairs of the world) and
  `adversarial` (absent pairs that share a shape or a colour with a present object), as the demo world defines them
  (`cobra_app.demo.conversations`), then `swapped`: absent pairs whose shape and colour are both in the scene, on
  different objects ("a red circle" beside a red square and a blue circle), asked of the scenes that have one, with
  as many of the same positives. Each split is its own category.

The scenes come from a random stream of their own (seed key PROBE_STREAM), never the demo model's training stream.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cobra_app.demo.conversations import (
    EVAL_STREAM,
    POPE_SPLITS,
    QA,
    RELATION_PHRASES,
    SWAPPED,
    TRAIN_STREAM,
    absent_pairs,
    with_article,
)
from cobra_app.demo.model_config import DEMO_VISION_ID
from cobra_app.demo.phrasing import TRUE_FALSE_PROMPT
from cobra_app.demo.scenes import RELATIONS, Scene, relation_holds, render, sample_scene
from cobra_app.model.vision import VISION_BACKBONES
from cobra_app.probe.scoring import answers_for

IMAGE_SIZE = VISION_BACKBONES[DEMO_VISION_ID].image_size  # the demo model's input size

DEFAULT_OUT = Path("assets/probes")
PROBE_SEED = 6
PROBE_STREAM = 2  # seed-sequence key, distinct from the demo's TRAIN_STREAM and EVAL_STREAM
N_SCENES = 48
MAX_POSITIVES = 3  # POPE asks about three ground-truth objects per image
assert PROBE_STREAM not in (TRAIN_STREAM, EVAL_STREAM)


def spatial_statement(a_name: str, relation: str, b_name: str) -> str:
    """The demo world's VSR statement (the text inside `TRUE_FALSE_PROMPT`)."""
    return f"The {a_name} is {RELATION_PHRASES[relation]} the {b_name}."


def existence_question(shape: str, colour: str) -> str:
    return f"Is there {with_article(f'{colour} {shape}')} in the image?"


def _pick(rng: np.random.Generator, items: list, k: int) -> list:
    return [items[i] for i in sorted(rng.choice(len(items), size=min(k, len(items)), replace=False))]


def sample_scenes(rng: np.random.Generator, n_scenes: int) -> list[Scene]:
    """The suites' scenes: 2-4 objects each (a spatial relation needs two)."""
    return [sample_scene(rng, n_objects=int(rng.integers(2, 5))) for _ in range(n_scenes)]


def example_scenes(n_scenes: int = N_SCENES, seed: int = PROBE_SEED) -> list[Scene]:
    """The scenes behind `images/scene_NNN.png` of the shipped suites (for tests that need their geometry)."""
    return sample_scenes(np.random.default_rng([seed, PROBE_STREAM]), n_scenes)


def spatial_cases(scenes: Sequence[Scene], rng: np.random.Generator) -> list[dict]:
    balance = {rel: [0, 0] for rel in RELATIONS}  # relation -> [true count, false count]
    cases = []
    for index, scene in enumerate(scenes):
        for rel in RELATIONS:
            found = {True: [], False: []}
            for a in scene.objects:
                for b in scene.objects:
                    if a is not b and (holds := relation_holds(a, b, rel)) is not None:
                        found[holds].append((a, b))
            want = balance[rel][0] <= balance[rel][1]
            truth = want if found[want] else not want
            if not found[truth]:
                continue
            a, b = found[truth][rng.integers(len(found[truth]))]
            balance[rel][0 if truth else 1] += 1
            cases.append({
                "image": f"images/scene_{index:03d}.png", "question": spatial_statement(a.name, rel, b.name),
                "answer": "True" if truth else "False", "answers": "true-false", "category": rel,
                "tags": ["vsr", f"{len(scene.objects)} objects"],
            })
    return cases


def existence_cases(scenes: Sequence[Scene], rng: np.random.Generator) -> list[dict]:
    """POPE's three splits scene by scene, then the swapped split (drawn last, so that adding it changed none of the
    others' cases)."""
    cases, positives = [], []
    for index, scene in enumerate(scenes):
        positives.append(_pick(rng, [(o.shape, o.colour) for o in scene.objects], MAX_POSITIVES))
        for split in POPE_SPLITS:
            cases += _existence_split(index, scene, split, positives[index], rng)
    for index, scene in enumerate(scenes):
        cases += _existence_split(index, scene, SWAPPED, positives[index], rng)
    return cases


def _existence_split(index: int, scene: Scene, split: str, present: list[tuple[str, str]],
                     rng: np.random.Generator) -> list[dict]:
    """One scene's cases of one split: as many absent pairs of the split as positives (fewer positives where the
    split has fewer absent pairs), in a random order."""
    absent = _pick(rng, absent_pairs(scene, split), len(present))
    asked = [(pair, True) for pair in present[: len(absent)]] + [(pair, False) for pair in absent]
    cases = []
    for i in rng.permutation(len(asked)):
        (shape, colour), yes = asked[i]
        cases.append({
            "image": f"images/scene_{index:03d}.png", "question": existence_question(shape, colour),
            "answer": "Yes" if yes else "No", "answers": "yes-no", "category": split,
            "tags": ["pope", "present" if yes else "absent"],
        })
    return cases


def write_jsonl(path: Path, cases: list[dict], prefix: str) -> None:
    lines = [json.dumps({**case, "id": f"{prefix}-{i:04d}"}, ensure_ascii=False) for i, case in enumerate(cases, 1)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def statement_of(prompt: str) -> str:
    """The statement inside a VSR prompt (the inverse of `TRUE_FALSE_PROMPT.format(statement=...)`)."""
    head, tail = TRUE_FALSE_PROMPT.split("{statement}")
    if not (prompt.startswith(head) and prompt.endswith(tail)):
        raise ValueError(f"not a True/False prompt: {prompt!r}")
    return prompt[len(head) : len(prompt) - len(tail)]


def suite_from_demo_items(items: Sequence[tuple[Scene, QA]], out_dir: str | Path, name: str = "demo-items",
                          image_size: int = IMAGE_SIZE) -> Path:
    """Write the closed-set items of a demo evaluation set (`make_eval_set`) as a probe suite: one PNG per item
    rendered at `image_size` (the demo evaluation renders at the model's vision size, 64 px for the demo model; PNG is
    lossless, so the pixels are the evaluation's), category = the QA kind, tags = its tags; True/False questions become
    their statements (the runner re-applies the same template). Open-answer items are left out. Returns the path."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    cases = []
    for index, (scene, qa) in enumerate(items):
        if qa.choices is None:
            continue
        image = f"images/item_{index:04d}.png"
        render(scene, image_size).save(out_dir / image)
        answers = answers_for(qa.answer)
        question = statement_of(qa.question) if answers == "true-false" else qa.question
        cases.append({"image": image, "question": question, "answer": qa.answer, "answers": answers,
                      "category": qa.kind, "tags": list(qa.tags), "id": f"item-{index:04d}"})
    path = out_dir / f"{name}.jsonl"
    path.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in cases), encoding="utf-8")
    return path


def make_suites(out_dir: str | Path = DEFAULT_OUT, n_scenes: int = N_SCENES, seed: int = PROBE_SEED) -> dict[str, Path]:
    """Write images/, spatial.jsonl and existence.jsonl into `out_dir`; return {suite name: path}."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, PROBE_STREAM])
    scenes = sample_scenes(rng, n_scenes)
    for index, scene in enumerate(scenes):
        render(scene, IMAGE_SIZE).save(out_dir / "images" / f"scene_{index:03d}.png", optimize=True)
    paths = {"spatial": out_dir / "spatial.jsonl", "existence": out_dir / "existence.jsonl"}
    write_jsonl(paths["spatial"], spatial_cases(scenes, rng), "spatial")
    write_jsonl(paths["existence"], existence_cases(scenes, rng), "exist")
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cobra_app.probe.make_suites", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--scenes", type=int, default=N_SCENES, help=f"number of scenes (default: {N_SCENES})")
    parser.add_argument("--seed", type=int, default=PROBE_SEED, help=f"random seed (default: {PROBE_SEED})")
    args = parser.parse_args(argv)
    for name, path in make_suites(args.out, args.scenes, args.seed).items():
        n = sum(1 for line in path.read_text().splitlines() if line.strip())
        print(f"{name}: {n} cases -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
