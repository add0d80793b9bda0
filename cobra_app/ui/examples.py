"""Example images for the app, rendered from the synthetic scene world, each with suggested questions and the answers
the scene's geometry implies (the offline demo model should give them; tests check it).

    python -m cobra_app.ui.examples assets/examples     # regenerate (deterministic)

`examples.json`: [{"image": "scene-1.png", "objects": [...], "questions": [{"question": ..., "answer": ...}, ...]}].
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cobra_app.demo.conversations import PAIRS, QA_KINDS, ask, with_article
from cobra_app.demo.scenes import render, sample_scene

INDEX = "examples.json"
IMAGE_SIZE = 256  # shown large in the app; the demo model reads them resized to its 64 px input, like any upload
SEED = 137  # chosen for variety: 11 distinct objects, every colour and shape
OBJECT_COUNTS = (2, 3, 4, 2)


GENERIC_QUESTIONS = ("Describe the image.", "How many objects are there?", "Is there a red circle in the image?")


@dataclass(frozen=True)
class Example:
    image: Path
    objects: tuple[str, ...]
    questions: tuple[tuple[str, str], ...]  # (question, expected answer)


def file_digest(path: str | Path) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


class Suggestions:
    """Suggested questions for an image: an example's own questions (recognised by file content, since Gradio hands
    over a copy), generic ones otherwise."""

    def __init__(self, examples: list[Example], generic: tuple[str, ...] = GENERIC_QUESTIONS):
        self.generic = list(generic)
        self._by_digest = {file_digest(e.image): [q for q, _ in e.questions] for e in examples}

    def for_image(self, path: str | Path | None) -> list[str]:
        if not path:
            return self.generic
        return self._by_digest.get(file_digest(path), self.generic)


def load_examples(directory: Path) -> list[Example]:
    """The examples in `directory` ([] when there is no index)."""
    index = Path(directory) / INDEX
    if not index.is_file():
        return []
    return [Example(Path(directory) / e["image"], tuple(e["objects"]),
                    tuple((q["question"], q["answer"]) for q in e["questions"]))
            for e in json.loads(index.read_text())]


def _questions(scene, rng: np.random.Generator) -> list[dict]:
    """One question per kind in a fixed order, and two existence questions: a present object (Yes), an absent one
    of a colour or shape that is in the scene (No)."""
    present = {(o.shape, o.colour) for o in scene.objects}
    shown = scene.objects[int(rng.integers(len(scene.objects)))]
    absent = [(s, c) for s, c in PAIRS if (s, c) not in present and any(s == o.shape or c == o.colour
                                                                         for o in scene.objects)]
    shape, colour = absent[int(rng.integers(len(absent)))]
    out: list[dict] = [
        {"question": f"Is there {with_article(shown.name)} in the image?", "answer": "Yes", "kind": "exist"},
        {"question": f"Is there {with_article(colour + ' ' + shape)} in the image?", "answer": "No", "kind": "exist"},
    ]
    for kind in ("describe", "count", "colour", "shape", "spatial"):
        for _ in range(20):
            qa = ask(kind, scene, rng)
            if qa is not None and qa.choices != ("True", "False") and all(q["question"] != qa.question for q in out):
                out.append({"question": qa.question, "answer": qa.answer, "kind": qa.kind})
                break
    out = out[2:3] + out[3:] + out[:2]  # describe first, the Yes/No pair last
    assert {q["kind"] for q in out} <= set(QA_KINDS)
    return out


def write_examples(out_dir: Path, seed: int = SEED) -> list[Example]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, n_objects=n) for n in OBJECT_COUNTS]
    index = []
    for i, scene in enumerate(scenes, start=1):
        name = f"scene-{i}.png"
        render(scene, IMAGE_SIZE).save(out_dir / name, optimize=True)
        index.append({"image": name, "objects": [o.name for o in scene.left_to_right()],
                      "questions": _questions(scene, rng)})
    (out_dir / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return load_examples(out_dir)


if __name__ == "__main__":
    for example in write_examples(Path(sys.argv[1] if len(sys.argv) > 1 else "assets/examples")):
        print(example.image, example.objects, *example.questions, sep="\n  ")
