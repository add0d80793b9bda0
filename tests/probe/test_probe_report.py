"""The HTML report: self-contained, thumbnails, bars, per-category tables, failures first; opened in Chromium."""

import re
import shutil
from pathlib import Path

import pytest

from cobra_app.probe import CaseResult, ProbeRun, compute_metrics, load_suite, render_html, write_report
from tests.probe.probe_helpers import mixed_rows, write_suite

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
# P(positive) per case of mixed_rows() (answers No Yes False Yes No True No Yes False Yes No True)
P_POSITIVE = [0.2, 0.3, 0.9, 0.8, 0.45, 0.7, 0.1, 0.95, 0.97, 0.15, 0.6, 0.35]
# the misclassified lines by decreasing confidence in the wrong answer: 0.97, 0.9, 0.85, 0.7, 0.65, 0.6
FAILED_LINES = [9, 3, 10, 2, 12, 11]


def _run(folder: Path, skipped_line: bool = False) -> ProbeRun:
    rows = mixed_rows()
    if skipped_line:
        rows.append("{broken")
    suite = load_suite(write_suite(folder, rows), skip_bad=skipped_line)
    results = []
    for case, p in zip(suite.cases, P_POSITIVE):
        words = ("Yes", "No") if case.answers == "yes-no" else ("True", "False")
        results.append(CaseResult(case, case.question, p, 1 - p, words[0] if p >= 0.5 else words[1]))
    categories, overall = compute_metrics(results)
    return ProbeRun(suite.path, results, categories, overall, bad_lines=suite.bad_lines,
                    model={"model_id": "hand-made", "device": "cpu", "dtype": "float32"}, images_encoded=3,
                    seconds=0.5, started="2025-01-01T00:00:00+00:00")


def test_failures_are_sorted_most_confident_first(tmp_path):
    run = _run(tmp_path)
    failures = run.failures
    wrong = {r.case.line for r in run.results if not r.correct}
    assert {r.case.line for r in failures} == wrong and [r.case.line for r in failures] == FAILED_LINES
    confidences = [r.confidence_in_prediction for r in failures]
    assert confidences == sorted(confidences, reverse=True)


def test_html_is_self_contained_with_thumbnails_bars_and_failures_first(tmp_path):
    run = _run(tmp_path, skipped_line=True)
    html = render_html(run)
    # nothing fetched from elsewhere: no URL but data: URIs
    assert not re.search(r"(src|href)=\"(?!data:)", html) and "http://" not in html and "https://" not in html
    assert "<script" not in html
    assert html.count("data:image/png;base64,") == 3  # one thumbnail per distinct image, shared by its rows
    rows = re.findall(r'<tr class="case (failure|success)" data-correct="(true|false)" data-line="(\d+)"', html)
    assert len(rows) == 12
    n_fail = sum(1 for r in run.results if not r.correct)
    assert [state for state, _, _ in rows[:n_fail]] == ["failure"] * n_fail
    assert [state for state, _, _ in rows[n_fail:]] == ["success"] * (12 - n_fail)
    assert [int(line) for _, _, line in rows[:n_fail]] == FAILED_LINES
    assert html.count('class="bar"') == 12 and 'style="width:97.0%"' in html
    for category in ("exist-a", "exist-b", "spatial", "overall"):  # metrics rows, and a correct-case table each
        assert f'data-category="{category}"><td>{category}</td>' in html
    assert html.count('<details class="category"') == 3
    assert "Skipped lines (1)" in html and "line 13: invalid JSON" in html


def test_user_text_is_escaped(tmp_path):
    rows = mixed_rows()[:2]
    rows[0] = rows[0] | {"question": "<img src=x onerror=alert(1)> & co", "tags": ["<u>tag"], "category": "<i>"}
    suite = load_suite(write_suite(tmp_path, rows))
    results = [CaseResult(c, c.question, 0.7, 0.3, "Yes") for c in suite.cases]
    categories, overall = compute_metrics(results)
    html = render_html(ProbeRun(suite.path, results, categories, overall))
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt; &amp; co" in html
    assert "<u>" not in html and "&lt;u&gt;tag" in html and "<i>" not in html and "&lt;i&gt;" in html


def test_missing_image_at_report_time_shows_a_placeholder(tmp_path):
    run = _run(tmp_path)
    (tmp_path / "images" / "img2.png").unlink()
    html = render_html(run)
    assert html.count("data:image/png;base64,") == 2 and "no image" in html


@pytest.mark.browser
def test_report_opens_in_chromium_with_failures_first(tmp_path):
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    run = _run(tmp_path, skipped_line=True)
    html_path = write_report(run, tmp_path / "report")
    requests = []
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / "probe-report.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                                    headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(html_path.as_uri())
            page.screenshot(path=str(shot), full_page=True)
            assert page.title() == "Probe report: suite"
            states = page.eval_on_selector_all("tr.case", "rows => rows.map(r => r.dataset.correct)")
            lines = page.eval_on_selector_all("tr.case", "rows => rows.map(r => Number(r.dataset.line))")
            n_fail = len(run.failures)
            assert n_fail == len(FAILED_LINES) and states == ["false"] * n_fail + ["true"] * (len(run.results) - n_fail)
            assert lines[:n_fail] == FAILED_LINES
            # on screen: the misclassified section sits above the correct cases, right after the metrics table
            fail_top = page.locator("#failures").bounding_box()["y"]
            correct_top = page.locator("#correct").bounding_box()["y"]
            metrics_top = page.locator("#metrics").bounding_box()["y"]
            assert metrics_top < fail_top < correct_top
            first_row = page.locator("tr.case").first
            assert first_row.bounding_box()["y"] < correct_top
            assert first_row.locator("td.pred").inner_text() != first_row.locator("td").nth(3).inner_text()
            # thumbnails are decoded images with a size, bars have their width
            thumb = first_row.locator(".thumb")
            assert "data:image/png;base64" in thumb.evaluate("e => getComputedStyle(e).backgroundImage")
            assert thumb.bounding_box()["width"] > 40
            fill = first_row.locator(".bar .fill").bounding_box()["width"]
            bar = first_row.locator(".bar").bounding_box()["width"]
            assert fill / bar == pytest.approx(run.failures[0].p_positive, abs=0.02)
            assert page.locator("#metrics tr.category").count() == 3
            assert page.locator("#skipped").is_visible()
        finally:
            browser.close()
    assert shot.is_file() and shot.stat().st_size > 10_000
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
