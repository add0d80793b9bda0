"""Probe suites: one JSON object per line (JSONL), each a closed-set case about one image.

    {"image": "images/scene_000.png", "question": "Is there a red circle in the image?", "answer": "Yes",
     "answers": "yes-no", "category": "random", "tags": ["pope"], "id": "exist-0001"}

Fields
- `image` (required): path of the image, relative to the suite file's folder (an absolute path is used as is).
- `question` (required): for `"answers": "yes-no"` the question exactly as the user turn; for `"true-false"` the
  *statement* only, which the runner wraps in the VSR prompt (see `cobra_app.probe.scoring.closed_set_prompt`):
  `Based on the image, is this statement "True" or "False"? {statement}\\nRespond with "True" or "False" directly.`
- `answer` (required): the expected answer, one word of the answer pair ("Yes"/"No" or "True"/"False"; any case).
- `answers` (optional): the answer pair, `"yes-no"` (POPE) or `"true-false"` (VSR). When absent it is inferred from
  `answer`; when present `answer` must belong to it.
- `category` (optional, default "uncategorized"): metrics are computed per category (and overall).
- `tags` (optional): a list of free strings, shown in the report and kept in the JSON output.
- `id` (optional, default "line-N"): a unique name for the case.

Blank lines are ignored. Any other problem (invalid JSON, a missing or unknown field, a wrong type, an answer outside
its pair, a missing or unreadable image, a duplicate id) is a `SuiteError` naming the file and the 1-based line number;
with `skip_bad=True` such lines are collected as `BadLine`s instead and the rest of the suite is kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from cobra_app.generation.scoring import ANSWER_PAIRS

REQUIRED_FIELDS = ("image", "question", "answer")
OPTIONAL_FIELDS = ("answers", "category", "tags", "id")
DEFAULT_CATEGORY = "uncategorized"


class SuiteError(ValueError):
    """A problem with a suite file; `line` is the 1-based line number (None for the file as a whole)."""

    def __init__(self, path: str | Path, line: int | None, message: str):
        self.path, self.line, self.message = str(path), line, message
        super().__init__(f"{self.path}:{line}: {message}" if line is not None else f"{self.path}: {message}")


@dataclass(frozen=True)
class BadLine:
    """A line skipped under `skip_bad`: its 1-based number and why."""

    line: int
    message: str

    def to_dict(self) -> dict:
        return {"line": self.line, "message": self.message}


@dataclass(frozen=True)
class ProbeCase:
    """One parsed case. `question` is as written in the suite (the statement, for true-false cases)."""

    line: int
    id: str
    image: str  # as written in the suite
    image_path: Path  # resolved
    question: str
    answer: str  # canonical spelling: "Yes", "No", "True" or "False"
    answers: str  # "yes-no" or "true-false"
    category: str
    tags: tuple[str, ...] = ()

    @property
    def positive(self) -> bool:
        """Whether the expected answer is the pair's positive word (Yes / True)."""
        return self.answer == ANSWER_PAIRS[self.answers].positive

    def to_dict(self) -> dict:
        return {"line": self.line, "id": self.id, "image": self.image, "question": self.question,
                "answer": self.answer, "answers": self.answers, "category": self.category, "tags": list(self.tags)}


@dataclass
class Suite:
    """A parsed suite: the valid cases in file order and (under `skip_bad`) the lines that were skipped."""

    path: Path
    cases: list[ProbeCase]
    bad_lines: list[BadLine] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.stem


class _LineError(Exception):
    pass


def _string(obj: dict, key: str, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise _LineError(f"field {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise _LineError(f"field {key!r} is empty")
    return value


def _canonical_answer(answer: str, answers: str | None) -> tuple[str, str]:
    """(canonical answer word, pair name); the pair is inferred from the answer when not given."""
    pairs = {answers: ANSWER_PAIRS[answers]} if answers is not None else ANSWER_PAIRS
    for name, pair in pairs.items():
        for word in pair.words:
            if answer.strip().lower() == word.lower():
                return word, name
    allowed = " or ".join(repr(w) for p in pairs.values() for w in p.words)
    where = f" for answers {answers!r}" if answers is not None else ""
    raise _LineError(f"answer {answer!r} is not a valid answer{where}: use {allowed}")


def check_image(path: Path) -> None:
    """Raise `_LineError` if `path` is not a readable image file (reads the header only)."""
    if not path.is_file():
        raise _LineError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - the header was parsed
    except (UnidentifiedImageError, OSError) as e:
        raise _LineError(f"image {path} cannot be read: {e}") from None


def parse_case(text: str, line: int, base_dir: Path) -> ProbeCase:
    """One suite line -> ProbeCase; raises `_LineError` with a message (the caller adds the line number)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise _LineError(f"invalid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(obj, dict):
        raise _LineError(f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise _LineError(f"unknown field(s) {', '.join(map(repr, unknown))}; "
                         f"allowed: {', '.join(REQUIRED_FIELDS + OPTIONAL_FIELDS)}")
    missing = [k for k in REQUIRED_FIELDS if k not in obj]
    if missing:
        raise _LineError(f"missing required field(s) {', '.join(map(repr, missing))}")
    answers = None
    if "answers" in obj:
        answers = _string(obj, "answers")
        if answers not in ANSWER_PAIRS:
            raise _LineError(f"unknown answers {answers!r}: use {' or '.join(map(repr, ANSWER_PAIRS))}")
    answer, answers = _canonical_answer(_string(obj, "answer"), answers)
    tags = obj.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise _LineError("field 'tags' must be a list of strings")
    image = _string(obj, "image")
    image_path = Path(image) if Path(image).is_absolute() else base_dir / image
    check_image(image_path)
    return ProbeCase(
        line=line,
        id=_string(obj, "id", f"line-{line}"),
        image=image,
        image_path=image_path,
        question=_string(obj, "question").strip(),
        answer=answer,
        answers=answers,
        category=_string(obj, "category", DEFAULT_CATEGORY).strip(),
        tags=tuple(tags),
    )


def load_suite(path: str | Path, skip_bad: bool = False) -> Suite:
    """Parse a JSONL suite. Errors name the line; with `skip_bad` bad lines are skipped and listed in `bad_lines`.

    A suite that yields no valid case is an error either way.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SuiteError(path, None, "suite file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SuiteError(path, None, f"cannot read the suite: {e}") from None
    cases: list[ProbeCase] = []
    bad: list[BadLine] = []
    seen_ids: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            case = parse_case(raw, number, path.parent)
            if case.id in seen_ids:
                raise _LineError(f"duplicate id {case.id!r} (first used on line {seen_ids[case.id]})")
        except _LineError as e:
            if not skip_bad:
                raise SuiteError(path, number, str(e)) from None
            bad.append(BadLine(number, str(e)))
            continue
        seen_ids[case.id] = number
        cases.append(case)
    if not cases:
        detail = f" ({len(bad)} bad line(s) skipped)" if bad else ""
        raise SuiteError(path, None, f"the suite has no valid case{detail}")
    return Suite(path, cases, bad)
