"""The Probe tab: score an uploaded probe suite (JSONL + its images, or one .zip holding both) and show the report.

Uploads are staged into a fresh folder before `cobra_app.probe` reads them, so that a suite can only refer to the
files uploaded with it: image paths must be relative and stay inside the suite's folder (no absolute paths, no
`..`), loose images are matched by file name, zip members are extracted only when their names are safe, and every
image passes the app's image checks (size caps before decoding). The number of cases is capped.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cobra_app.images import DEFAULT_LIMITS, ImageLimits, ImageRejected, open_image

SUITE_SUFFIXES = (".jsonl", ".json", ".ndjson")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
MAX_ZIP_BYTES = 200 * 10**6  # uncompressed total
MAX_ZIP_MEMBERS = 5000
KEEP_RUNS = 20  # reports kept on disk (older runs' folders are deleted)


class SuiteUploadError(ValueError):
    def __init__(self, user_message: str):
        self.user_message = user_message
        super().__init__(user_message)


@dataclass
class SuiteResult:
    report_html: str  # the self-contained report
    report_path: Path
    results_path: Path | None
    summary: str  # one line of Markdown


def _safe_relative(name: str) -> PurePosixPath | None:
    """A member/image name as a relative path inside the folder, or None if it would escape it."""
    name = name.replace("\\", "/")
    path = PurePosixPath(name)
    if not path.parts or path.is_absolute() or ".." in path.parts or ":" in path.parts[0]:
        return None
    return path


def _extract_zip(archive: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as z:
            members = [m for m in z.infolist() if not m.is_dir()]
            if len(members) > MAX_ZIP_MEMBERS:
                raise SuiteUploadError(f"The zip file holds {len(members)} files; the limit is {MAX_ZIP_MEMBERS}.")
            if sum(m.file_size for m in members) > MAX_ZIP_BYTES:
                raise SuiteUploadError(f"The zip file unpacks to more than {MAX_ZIP_BYTES // 10**6} MB.")
            for m in members:
                rel = _safe_relative(m.filename)
                if rel is None:
                    raise SuiteUploadError(f"The zip file contains an unsafe path: {m.filename!r}.")
                target = dest.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    except zipfile.BadZipFile:
        raise SuiteUploadError("The .zip file is damaged or not a zip file.") from None


def stage_suite(files: Sequence[str | Path], work: Path, image_limits: ImageLimits = DEFAULT_LIMITS,
                max_cases: int = 1000) -> Path:
    """Put the uploaded suite and its images into `work`; return the suite file's path there."""
    files = [Path(f) for f in files or []]
    if not files:
        raise SuiteUploadError("Please upload a probe suite: a .jsonl file with its images, or a .zip of both.")
    zips = [f for f in files if f.suffix.lower() == ".zip"]
    for z in zips:
        _extract_zip(z, work)
    suites = [f for f in files if f.suffix.lower() in SUITE_SUFFIXES]
    loose_images = {f.name: f for f in files if f.suffix.lower() in IMAGE_SUFFIXES}
    if not suites:
        suites = sorted(p for p in work.rglob("*") if p.suffix.lower() in SUITE_SUFFIXES)
    if len(suites) != 1:
        raise SuiteUploadError("Please upload exactly one suite file (.jsonl)" +
                               (f"; found {len(suites)}." if suites else "; none was found."))
    suite = suites[0]
    if not suite.is_relative_to(work):
        staged = work / suite.name
        shutil.copyfile(suite, staged)
        suite = staged
    base = suite.parent
    try:
        lines = suite.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise SuiteUploadError("The suite file is not UTF-8 text.") from None
    cases = [line for line in lines if line.strip()]
    if len(cases) > max_cases:
        raise SuiteUploadError(f"The suite has {len(cases)} cases; this app scores at most {max_cases}. Use "
                               "`python -m cobra_app probe` for larger suites.")
    checked: set[Path] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            image = json.loads(line).get("image")
        except (json.JSONDecodeError, AttributeError):
            continue  # the suite parser reports malformed lines itself
        if not isinstance(image, str):
            continue
        rel = _safe_relative(image)
        if rel is None:
            raise SuiteUploadError(f"Line {number}: the image path {image!r} must be relative to the suite's folder "
                                   "(no absolute paths or '..').")
        target = base.joinpath(*rel.parts)
        if not target.exists() and rel.name in loose_images:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(loose_images[rel.name], target)
        if target.exists() and target not in checked:
            try:
                open_image(target, image_limits)
            except ImageRejected as exc:
                raise SuiteUploadError(f"Line {number}: image {image!r}: {exc.user_message}") from None
            checked.add(target)
    return suite


def run_uploaded_suite(cobra, files: Sequence[str | Path], out_root: Path, *, image_limits: ImageLimits = DEFAULT_LIMITS,
                       max_cases: int = 1000, progress: Callable[[int, int], None] | None = None) -> SuiteResult:
    """Stage, score (bad lines skipped and listed in the report) and write the report under `out_root`."""
    from cobra_app.probe import SuiteError, run_suite, write_report

    out_root.mkdir(parents=True, exist_ok=True)
    old_runs = sorted(out_root.glob("suite-*"), key=lambda p: p.stat().st_mtime)
    for old in old_runs[: max(0, len(old_runs) - KEEP_RUNS + 1)]:
        shutil.rmtree(old, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix="suite-", dir=out_root))
    try:
        (work / "in").mkdir()
        suite = stage_suite(files, work / "in", image_limits, max_cases)
        try:
            run = run_suite(cobra, suite, skip_bad=True, progress=progress)
        except SuiteError as exc:
            raise SuiteUploadError(f"The suite cannot be scored: {exc}") from None
        report = write_report(run, work / "report")
        results = report.parent / "results.json"
        shutil.rmtree(work / "in", ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    acc = run.overall.accuracy
    summary = (f"**{run.suite_name}**: {len(run.results)} cases scored"
               + (f", accuracy {acc:.3f}" if acc is not None else "")
               + (f"; {len(run.bad_lines)} bad line(s) skipped (listed in the report)" if run.bad_lines else "")
               + f" ({run.seconds:.1f} s).")
    return SuiteResult(report.read_text(encoding="utf-8"), report, results if results.exists() else None, summary)
