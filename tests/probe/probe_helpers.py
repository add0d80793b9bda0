"""Helpers for the probe tests: small suites on disk."""

import json
from pathlib import Path

from tests.helpers import sample_image


def write_suite(folder: Path, rows: list, name: str = "suite.jsonl", images: int = 3) -> Path:
    """Write `images` PNGs under folder/images/ and a suite whose lines are `rows` (dicts are JSON-encoded, strings
    written verbatim)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        sample_image(width=40 + 5 * i, height=30, seed=i).save(folder / "images" / f"img{i}.png")
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path = folder / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def mixed_rows() -> list[dict]:
    """Twelve cases over three images: Yes/No questions (two categories) and True/False statements."""
    rows = []
    for i in range(12):
        image = f"images/img{i % 3}.png"
        if i % 3 == 2:
            rows.append({"image": image, "question": "The cup is left of the plate.",
                         "answer": "True" if i % 2 else "False", "answers": "true-false", "category": "spatial",
                         "tags": ["vsr"]})
        else:
            rows.append({"image": image, "question": "Is there a dog in the image?", "answer": "Yes" if i % 2 else "No",
                         "answers": "yes-no", "category": "exist-" + ("a" if i % 3 == 0 else "b"), "tags": ["pope"]})
    return rows
