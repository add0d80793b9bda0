"""`python -m cobra_app probe SUITE.jsonl --model PATH --out DIR [--skip-bad] [--device D] [--dtype T]`
(a release-layout run's own files: `--llm DIR`, `--vision-weights DIR`)

Closed-set scoring of every case of a JSONL probe suite (format: `cobra_app.probe.suite`), with a progress bar.
Writes DIR/results.json (per-case probabilities and predictions, metrics) and DIR/report.html (self-contained), and
prints accuracy, precision, recall, F1 and AUC-ROC per category. The suite is checked before the model is loaded.

Exit status: 0 done; 2 a bad suite (the message names the line; `--skip-bad` skips bad lines and counts them) or bad
options; 1 the model cannot be loaded.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from cobra_app.cli.model_files import add_model_file_options, model_file_options

DEFAULT_OUT = Path("runs/probe")  # runs/ is git-ignored


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cobra_app probe",
        description="Closed-set scoring (Yes/No, True/False) of a JSONL probe suite, with an HTML report.",
    )
    parser.add_argument("suite", type=Path, help="JSONL suite; image paths are relative to its folder")
    parser.add_argument("--model", default="cobra+3b",
                        help="registry id, hub path or model directory, e.g. assets/demo-model (default: cobra+3b)")
    add_model_file_options(parser)
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output folder for results.json and report.html (default: {DEFAULT_OUT}/SUITE_NAME)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip malformed lines and cases with missing images (counted and listed) instead of failing")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16 or int8 (CPU) (default: auto)")
    return parser.parse_args(argv)


def _fmt(value: float | None) -> str:
    return "    —" if value is None else f"{value:.3f}"


def summary_table(run) -> str:
    """Plain-text metrics table: one row per category, then overall."""
    rows = [*run.categories.items(), ("overall", run.overall)]
    width = max(12, *(len(name) for name, _ in rows))
    lines = [f"{'category':<{width}}  {'n':>5}  {'acc':>5}  {'prec':>5}  {'rec':>5}  {'F1':>5}  {'AUC':>5}  {'yes%':>5}"]
    for name, m in rows:
        lines.append(f"{name:<{width}}  {m.n:>5}  {_fmt(m.accuracy)}  {_fmt(m.precision)}  {_fmt(m.recall)}  "
                     f"{_fmt(m.f1)}  {_fmt(m.auc)}  {_fmt(m.yes_ratio)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from cobra_app.probe import SuiteError, load_suite, run_suite, write_report

    try:
        suite = load_suite(args.suite, skip_bad=args.skip_bad)
    except SuiteError as e:
        print(f"error: {e}", file=sys.stderr)
        if not args.skip_bad and e.line is not None:
            print("hint: --skip-bad skips bad lines and counts them", file=sys.stderr)
        return 2
    for bad in suite.bad_lines:
        print(f"skipped {args.suite}:{bad.line}: {bad.message}", file=sys.stderr)

    from cobra_app import load

    try:
        cobra = load(args.model, device=args.device, dtype=args.dtype, **model_file_options(args))
    except Exception as e:  # noqa: BLE001 - any loading failure is reported the same way
        print(f"error: cannot load model {args.model!r}: {e}", file=sys.stderr)
        return 1

    bar = tqdm(total=len(suite.cases), unit="case", desc=f"probe {suite.name}", file=sys.stderr, dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    try:
        run = run_suite(cobra, suite, skip_bad=args.skip_bad, progress=progress)
    except SuiteError as e:
        bar.close()
        print(f"error: {e}", file=sys.stderr)
        return 2
    bar.close()
    for bad in [b for b in run.bad_lines if b not in suite.bad_lines]:  # images that failed to decode
        print(f"skipped {args.suite}:{bad.line}: {bad.message}", file=sys.stderr)
    out = args.out if args.out is not None else DEFAULT_OUT / suite.name
    html_path = write_report(run, out)

    print(summary_table(run))
    skipped = f", {len(run.bad_lines)} bad line(s) skipped" if run.bad_lines else ""
    print(f"\n{len(run.results)} cases scored, {len(run.failures)} misclassified{skipped}; "
          f"{run.images_encoded} images encoded in {run.seconds:.1f} s")
    print(f"report: {html_path}\nresults: {html_path.parent / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
