"""Run a probe suite: each distinct image is encoded once, every case scored by the shared closed-set path."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

from cobra_app.generation.scoring import get_answer_pair
from cobra_app.probe.metrics import BinaryMetrics, binary_metrics
from cobra_app.probe.scoring import closed_set_prompt, encode_image, predict, score_prompt
from cobra_app.probe.suite import BadLine, ProbeCase, Suite, SuiteError, load_suite

Progress = Callable[[int, int], None]  # (cases done, cases total)
OVERALL = "overall"


@dataclass(frozen=True)
class CaseResult:
    case: ProbeCase
    prompt: str  # the user message actually scored
    p_positive: float  # P(Yes) or P(True), renormalised over the pair
    p_negative: float
    prediction: str

    @property
    def correct(self) -> bool:
        return self.prediction == self.case.answer

    @property
    def probs(self) -> dict[str, float]:
        return dict(zip(get_answer_pair(self.case.answers).words, (self.p_positive, self.p_negative)))

    @property
    def confidence_in_prediction(self) -> float:
        return max(self.p_positive, self.p_negative)

    def to_dict(self) -> dict:
        return {**self.case.to_dict(), "prompt": self.prompt, "probs": self.probs,
                "p_positive": self.p_positive, "prediction": self.prediction, "correct": self.correct}


@dataclass
class ProbeRun:
    """A finished run: per-case results in suite order, metrics per category and overall, skipped lines."""

    suite_path: Path
    results: list[CaseResult]
    categories: dict[str, BinaryMetrics]  # in order of first appearance in the suite
    overall: BinaryMetrics
    bad_lines: list[BadLine] = field(default_factory=list)
    model: dict = field(default_factory=dict)
    images_encoded: int = 0
    seconds: float = 0.0
    started: str = ""

    @property
    def suite_name(self) -> str:
        return self.suite_path.stem

    @property
    def failures(self) -> list[CaseResult]:
        """Misclassified cases, most confidently wrong first."""
        return sorted((r for r in self.results if not r.correct), key=lambda r: -r.confidence_in_prediction)

    def accuracies(self) -> dict[str, float]:
        """{category: accuracy, ..., "overall": accuracy}."""
        return {**{c: m.accuracy for c, m in self.categories.items()}, OVERALL: self.overall.accuracy}

    def to_dict(self) -> dict:
        return {
            "suite": str(self.suite_path),
            "started": self.started,
            "seconds": round(self.seconds, 3),
            "model": self.model,
            "cases": len(self.results),
            "images_encoded": self.images_encoded,
            "skipped_lines": [b.to_dict() for b in self.bad_lines],
            "metrics": {
                "overall": self.overall.to_dict(),
                "categories": {c: m.to_dict() for c, m in self.categories.items()},
            },
            "results": [r.to_dict() for r in self.results],
        }


def compute_metrics(results: list[CaseResult]) -> tuple[dict[str, BinaryMetrics], BinaryMetrics]:
    """(metrics per category in order of first appearance, overall metrics)."""

    def metrics(rs: list[CaseResult]) -> BinaryMetrics:
        positive = [get_answer_pair(r.case.answers).positive for r in rs]
        return binary_metrics([r.case.answer == p for r, p in zip(rs, positive)],
                              [r.prediction == p for r, p in zip(rs, positive)],
                              [r.p_positive for r in rs])

    by_category: dict[str, list[CaseResult]] = {}
    for r in results:
        by_category.setdefault(r.case.category, []).append(r)
    return {c: metrics(rs) for c, rs in by_category.items()}, metrics(results)


def _model_info(cobra) -> dict:
    try:
        info = dict(cobra.info())
    except Exception:  # noqa: BLE001 - a description only; never fail a run over it
        info = {}
    return {**info, "python": platform.python_version()}


def run_suite(cobra, suite_path: str | Path | Suite, skip_bad: bool = False,
              progress: Progress | None = None) -> ProbeRun:
    """Score every case of a suite with `cobra` (a `cobra_app.Cobra`).

    `suite_path`: a JSONL file (parsed with `load_suite(suite_path, skip_bad)`) or an already parsed `Suite`.
    Images are encoded once each, in order of first appearance; an image that fails to decode is a `SuiteError`
    naming the first line that uses it, or with `skip_bad` all its cases are skipped and listed in `bad_lines`.
    `progress(done, total)` is called once before the first case and after every case.
    """
    suite = suite_path if isinstance(suite_path, Suite) else load_suite(suite_path, skip_bad=skip_bad)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    by_image: dict[Path, list[ProbeCase]] = {}
    for case in suite.cases:
        by_image.setdefault(case.image_path.resolve(), []).append(case)
    total, done = len(suite.cases), 0
    if progress is not None:
        progress(0, total)
    scored: dict[int, CaseResult] = {}
    bad = list(suite.bad_lines)
    images_encoded = 0
    for image_path, cases in by_image.items():
        try:
            with Image.open(image_path) as opened:
                image = opened.convert("RGB")
        except OSError as e:
            message = f"image {cases[0].image_path} cannot be decoded: {e}"
            if not skip_bad:
                raise SuiteError(suite.path, cases[0].line, message) from None
            bad.extend(BadLine(c.line, message) for c in cases)
            done += len(cases)
            if progress is not None:
                progress(done, total)
            continue
        embeds = encode_image(cobra.vlm, image)
        images_encoded += 1
        for case in cases:
            prompt = closed_set_prompt(case.question, case.answers)
            probs = score_prompt(cobra.vlm, cobra.turns, embeds, prompt, case.answers)
            scored[case.line] = CaseResult(case, prompt, probs[0], probs[1], predict(probs, case.answers))
            done += 1
            if progress is not None:
                progress(done, total)
    results = [scored[c.line] for c in suite.cases if c.line in scored]
    if not results:
        raise SuiteError(suite.path, None, f"no case could be scored ({len(bad)} bad line(s) skipped)")
    categories, overall = compute_metrics(results)
    return ProbeRun(
        suite_path=suite.path, results=results, categories=categories, overall=overall,
        bad_lines=sorted(bad, key=lambda b: b.line), model=_model_info(cobra), images_encoded=images_encoded,
        seconds=time.perf_counter() - t0, started=started,
    )
