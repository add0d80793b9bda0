"""Probe outputs: `results.json` (every case's probabilities and prediction, metrics) and a self-contained
`report.html` (inline CSS, images as base64 thumbnails, no script, no external resource).

The report shows, top to bottom: the run's summary, a metrics table with one row per category (and overall), the
skipped lines, then the misclassified cases (most confidently wrong first), then the correct cases in one table per
category. Each case row has its thumbnail, the question, the expected and predicted answers and a probability bar.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from PIL import Image

from cobra_app.generation.scoring import get_answer_pair
from cobra_app.probe.metrics import BinaryMetrics
from cobra_app.probe.runner import CaseResult, ProbeRun

THUMBNAIL_MAX = 128  # longest side of the embedded thumbnail, pixels (smaller images are embedded as they are)
OPEN_CORRECT_MAX = 40  # correct-case tables of at most this many rows start unfolded
JSON_NAME, HTML_NAME = "results.json", "report.html"


def write_json(run: ProbeRun, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(run.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_report(run: ProbeRun, out_dir: str | Path) -> Path:
    """Write `results.json` and `report.html` into `out_dir` (created if needed); return the HTML file's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(run, out_dir / JSON_NAME)
    path = out_dir / HTML_NAME
    path.write_text(render_html(run), encoding="utf-8")
    return path


def thumbnail_data_uri(path: Path) -> str | None:
    """A PNG data URI of the image, longest side at most THUMBNAIL_MAX; None if it cannot be read."""
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except OSError:
        return None
    image.thumbnail((THUMBNAIL_MAX, THUMBNAIL_MAX), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


CSS = """
:root { --ok: #1b7f3b; --bad: #b3261e; --pos: #2f6fdf; --neg: #d0d4dc; --line: #e3e5ea; --muted: #5f6673; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2129; margin: 0;
       background: #f6f7f9; }
main { max-width: 1200px; margin: 0 auto; padding: 20px 24px 48px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.meta { color: var(--muted); margin: 0 0 16px; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 16px; min-width: 130px; }
.card b { display: block; font-size: 22px; } .card span { color: var(--muted); font-size: 12px; }
.card.bad b { color: var(--bad); }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid var(--line); }
th, td { padding: 6px 8px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: middle; }
th { background: #eef0f4; font-weight: 600; font-size: 12px; text-transform: uppercase; letter-spacing: .03em; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: 700; background: #f3f6fb; }
tr.failure { background: #fff5f4; } tr.failure td.pred { color: var(--bad); font-weight: 700; }
tr.success td.pred { color: var(--ok); font-weight: 700; }
.thumb { width: 72px; height: 72px; border-radius: 4px; border: 1px solid var(--line);
         background: #fafafa center / contain no-repeat; image-rendering: pixelated; }
.thumb.missing { display: flex; align-items: center; justify-content: center; color: var(--muted); font-size: 11px; }
.q { max-width: 420px; } .q small { color: var(--muted); display: block; }
.tag { display: inline-block; background: #eef0f4; border-radius: 10px; padding: 0 7px; margin: 1px 2px 1px 0;
       font-size: 12px; color: #3b4150; }
.bar { position: relative; width: 190px; height: 18px; border-radius: 3px; background: var(--neg); overflow: hidden; }
.bar .fill { position: absolute; left: 0; top: 0; bottom: 0; background: var(--pos); }
.bar .mid { position: absolute; left: 50%; top: 0; bottom: 0; width: 1px; background: #1d2129; opacity: .5; }
.bar-label { font-size: 12px; color: var(--muted); font-variant-numeric: tabular-nums; }
details { margin: 8px 0; } summary { cursor: pointer; font-weight: 600; padding: 4px 0; }
.none { color: var(--muted); font-style: italic; }
ul.skipped { background: #fff; border: 1px solid var(--line); padding: 8px 8px 8px 28px; margin: 0; }
"""


def _metrics_row(name: str, m: BinaryMetrics, total: bool = False) -> str:
    cells = [m.n, _fmt(m.accuracy), _fmt(m.precision), _fmt(m.recall), _fmt(m.f1), _fmt(m.auc), _fmt(m.yes_ratio),
             m.tp, m.fp, m.tn, m.fn]
    tds = "".join(f'<td class="num">{c}</td>' for c in cells)
    return f'<tr class="{"total" if total else "category"}" data-category="{_e(name)}"><td>{_e(name)}</td>{tds}</tr>'


def _metrics_table(run: ProbeRun) -> str:
    heads = ["n", "accuracy", "precision", "recall", "F1", "AUC-ROC", "yes ratio", "TP", "FP", "TN", "FN"]
    head = "<th>category</th>" + "".join(f'<th class="num">{h}</th>' for h in heads)
    rows = "".join(_metrics_row(c, m) for c, m in run.categories.items())
    return (f'<table id="metrics"><thead><tr>{head}</tr></thead><tbody>{rows}'
            f'{_metrics_row("overall", run.overall, total=True)}</tbody></table>')


def _bar(result: CaseResult) -> str:
    pos, neg = get_answer_pair(result.case.answers).words
    p = result.p_positive
    return (f'<div class="bar" role="img" aria-label="P({pos}) = {p:.3f}" title="P({pos}) = {p:.4f}">'
            f'<div class="fill" style="width:{100 * p:.1f}%"></div><div class="mid"></div></div>'
            f'<div class="bar-label">{_e(pos)} {p:.3f} · {_e(neg)} {result.p_negative:.3f}</div>')


def _case_row(result: CaseResult, thumb_class: dict[Path, str | None]) -> str:
    case = result.case
    cls = thumb_class.get(case.image_path)
    thumb = (f'<div class="thumb {cls}" role="img" aria-label="{_e(case.image)}" title="{_e(case.image)}"></div>'
             if cls else f'<div class="thumb missing" title="{_e(case.image)}">no image</div>')
    kind = "statement (True/False)" if case.answers == "true-false" else "question (Yes/No)"
    tags = "".join(f'<span class="tag">{_e(t)}</span>' for t in case.tags)
    state = "success" if result.correct else "failure"
    return (f'<tr class="case {state}" data-correct="{str(result.correct).lower()}" data-line="{case.line}" '
            f'data-id="{_e(case.id)}"><td class="num">{case.line}</td><td>{thumb}</td>'
            f'<td class="q" title="{_e(result.prompt)}">{_e(case.question)}<small>{kind} · {_e(case.id)}</small></td>'
            f'<td>{_e(case.answer)}</td><td class="pred">{_e(result.prediction)}</td><td>{_bar(result)}</td>'
            f'<td>{_e(case.category)}</td><td>{tags}</td></tr>')


def _cases_table(results: list[CaseResult], thumb_class: dict[Path, str | None], table_id: str | None = None) -> str:
    head = "".join(f"<th{' class=num' if h == 'line' else ''}>{h}</th>" for h in
                   ("line", "image", "question", "expected", "predicted", "P(positive)", "category", "tags"))
    rows = "".join(_case_row(r, thumb_class) for r in results)
    id_attr = f' id="{table_id}"' if table_id else ""
    return f'<table{id_attr} class="cases"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def render_html(run: ProbeRun) -> str:
    """The report as one self-contained HTML document."""
    thumb_class: dict[Path, str | None] = {}
    thumb_css: list[str] = []
    for r in run.results:
        if r.case.image_path not in thumb_class:
            uri = thumbnail_data_uri(r.case.image_path)
            if uri is None:
                thumb_class[r.case.image_path] = None
            else:
                name = f"img{len(thumb_css)}"
                thumb_class[r.case.image_path] = name
                thumb_css.append(f".{name}{{background-image:url({uri})}}")

    failures = run.failures
    model = run.model
    model_text = " · ".join(_e(x) for x in (model.get("model_id"), model.get("source"), model.get("device"),
                                             model.get("dtype")) if x)
    n_fail = len(failures)
    cards = [
        (f"{run.overall.accuracy:.3f}", "accuracy", ""), (_fmt(run.overall.f1), "F1", ""),
        (_fmt(run.overall.auc), "AUC-ROC", ""), (f"{n_fail} / {len(run.results)}", "misclassified",
                                                  " bad" if n_fail else ""),
        (str(len(run.bad_lines)), "skipped lines", " bad" if run.bad_lines else ""),
    ]
    cards_html = "".join(f'<div class="card{extra}"><b>{v}</b><span>{label}</span></div>' for v, label, extra in cards)

    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Probe report: {_e(run.suite_name)}</title>",
        f"<style>{CSS}{''.join(thumb_css)}</style></head><body><main>",
        f"<h1>Probe report: {_e(run.suite_name)}</h1>",
        (f'<p class="meta">{model_text}<br>{len(run.results)} cases · {run.images_encoded} images encoded · '
         f"{run.seconds:.1f} s · {_e(run.started)} · {_e(run.suite_path)}</p>"),
        f'<div class="cards">{cards_html}</div>',
        '<h2>Metrics per category</h2>', _metrics_table(run),
    ]
    if run.bad_lines:
        items = "".join(f"<li>line {b.line}: {_e(b.message)}</li>" for b in run.bad_lines)
        parts += [f'<h2 id="skipped">Skipped lines ({len(run.bad_lines)})</h2><ul class="skipped">{items}</ul>']
    parts.append(f'<section id="failures"><h2>Misclassified cases ({n_fail})</h2>')
    parts.append(_cases_table(failures, thumb_class, "failure-table") if failures
                 else '<p class="none">No misclassified case.</p>')
    parts.append('</section><section id="correct">')
    parts.append(f"<h2>Correct cases ({len(run.results) - n_fail}), per category</h2>")
    for category in run.categories:
        rows = [r for r in run.results if r.correct and r.case.category == category]
        total = sum(1 for r in run.results if r.case.category == category)
        opened = " open" if len(rows) <= OPEN_CORRECT_MAX else ""
        body = _cases_table(rows, thumb_class) if rows else '<p class="none">No correct case.</p>'
        parts.append(f'<details class="category"{opened} data-category="{_e(category)}"><summary>{_e(category)}: '
                     f"{len(rows)} of {total} correct</summary>{body}</details>")
    parts.append("</section></main></body></html>")
    return "\n".join(parts)
