"""The runner and the CLI on a tiny random Cobra: shared scoring path, one encoding per image, outputs, --skip-bad."""

import json

import pytest

import cobra_app.probe.runner as runner_module
from cobra_app.__main__ import main as cli_main
from cobra_app.probe import SuiteError, closed_set_prompt, load_suite, run_suite, write_report
from tests.probe.probe_helpers import mixed_rows, write_suite

VSR_PROMPT = 'Based on the image, is this statement "True" or "False"? {}\nRespond with "True" or "False" directly.'


def test_prompts_follow_the_paper_protocol():
    assert closed_set_prompt("The cup is left of the plate.", "true-false") == VSR_PROMPT.format(
        "The cup is left of the plate.")
    assert closed_set_prompt("Is there a dog in the image?", "yes-no") == "Is there a dog in the image?"
    with pytest.raises(ValueError, match="unknown answer pair"):
        closed_set_prompt("x", "maybe")


@pytest.fixture(scope="module")
def mixed_run(cobra, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixed")
    rows = mixed_rows()
    rows[3] = rows[3] | {"image": "./images/../images/img0.png"}  # another spelling of an image already used
    path = write_suite(folder, rows)
    calls, ticks = [], []
    original = runner_module.encode_image

    def counting_encode(vlm, image):
        calls.append(image)
        return original(vlm, image)

    runner_module.encode_image = counting_encode
    try:
        run = run_suite(cobra, path, progress=lambda done, total: ticks.append((done, total)))
    finally:
        runner_module.encode_image = original
    return run, path, calls, ticks


def test_each_distinct_image_is_encoded_once(mixed_run):
    run, _, calls, ticks = mixed_run
    assert len(calls) == 3 and run.images_encoded == 3
    assert ticks[0] == (0, 12) and ticks[-1] == (12, 12) and [d for d, _ in ticks] == list(range(13))


def test_probabilities_are_those_of_cobra_score(mixed_run, cobra):
    """The runner's shared path reproduces the facade's closed-set scoring (reference section 7) case by case."""
    run, _, _, _ = mixed_run
    assert [r.case.line for r in run.results] == list(range(1, 13))
    for r in run.results:
        expected = cobra.score(r.case.image_path, r.prompt, answers=r.case.answers)
        assert r.probs == pytest.approx(expected, abs=1e-6)
        assert sum(r.probs.values()) == pytest.approx(1.0, abs=1e-6)
        positive, negative = list(expected)
        assert r.prediction == (positive if expected[positive] >= expected[negative] else negative)
        assert r.correct == (r.prediction == r.case.answer)
    tf = [r for r in run.results if r.case.answers == "true-false"]
    assert tf and all(r.prompt == VSR_PROMPT.format(r.case.question) for r in tf)
    assert set(tf[0].probs) == {"True", "False"}


def test_metrics_per_category(mixed_run):
    run, _, _, _ = mixed_run
    assert list(run.categories) == ["exist-a", "exist-b", "spatial"]
    assert sum(m.n for m in run.categories.values()) == run.overall.n == 12
    for category, m in run.categories.items():
        rs = [r for r in run.results if r.case.category == category]
        assert m.accuracy == pytest.approx(sum(r.correct for r in rs) / len(rs))
    assert run.accuracies()["overall"] == pytest.approx(sum(r.correct for r in run.results) / 12)
    assert [r.correct for r in run.failures] == [False] * len(run.failures)


def test_json_output_has_every_case_and_the_metrics(mixed_run, tmp_path):
    run, _, _, _ = mixed_run
    html_path = write_report(run, tmp_path / "out")
    assert html_path == tmp_path / "out" / "report.html" and html_path.is_file()
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["cases"] == 12 and data["images_encoded"] == 3 and data["skipped_lines"] == []
    assert data["model"]["model_id"] == "tiny-cobra" and data["model"]["dtype"] == "float32"
    assert set(data["metrics"]["categories"]) == {"exist-a", "exist-b", "spatial"}
    assert data["metrics"]["overall"]["accuracy"] == pytest.approx(run.overall.accuracy)
    for row, r in zip(data["results"], run.results):
        assert row["line"] == r.case.line and row["probs"] == pytest.approx(r.probs)
        assert row["prediction"] == r.prediction and row["correct"] == r.correct and row["prompt"] == r.prompt
        assert {"auc", "f1", "precision", "recall"} <= set(data["metrics"]["categories"][row["category"]])


def test_an_image_that_fails_to_decode_names_its_first_line(cobra, tmp_path):
    rows = mixed_rows()[:4]
    path = write_suite(tmp_path, rows)
    good = (tmp_path / "images" / "img1.png").read_bytes()
    (tmp_path / "images" / "img1.png").write_bytes(good[: len(good) // 2])  # header intact, data truncated
    load_suite(path)  # the header check passes
    with pytest.raises(SuiteError, match=r"suite.jsonl:2: image .*img1.png cannot be decoded"):
        run_suite(cobra, path)
    run = run_suite(cobra, path, skip_bad=True)
    assert [b.line for b in run.bad_lines] == [2] and [r.case.line for r in run.results] == [1, 3, 4]


def test_cli_writes_outputs_and_prints_metrics(tiny_model_dir, tmp_path, capsys):
    path = write_suite(tmp_path, mixed_rows())
    out = tmp_path / "out"
    assert cli_main(["probe", str(path), "--model", str(tiny_model_dir), "--out", str(out), "--device", "cpu",
                     "--dtype", "float32"]) == 0
    captured = capsys.readouterr()
    assert "probe suite" in captured.err and "12/12" in captured.err  # the tqdm progress bar
    for line in ("exist-a", "exist-b", "spatial", "overall"):
        assert line in captured.out
    assert "12 cases scored" in captured.out and str(out / "report.html") in captured.out
    data = json.loads((out / "results.json").read_text())
    assert data["cases"] == 12 and len(data["results"]) == 12


def test_cli_reports_bad_lines_and_skip_bad_counts_them(tiny_model_dir, tmp_path, capsys):
    rows = mixed_rows()
    rows[4] = '{"image": "images/img1.png", "question": "Is there a dog?"'  # line 5: malformed
    rows[7] = rows[7] | {"image": "images/gone.png"}  # line 8: missing image
    path = write_suite(tmp_path, rows)
    out = tmp_path / "out"
    base = ["probe", str(path), "--model", str(tiny_model_dir), "--out", str(out), "--device", "cpu"]
    assert cli_main(base) == 2
    err = capsys.readouterr().err
    assert f"error: {path}:5: invalid JSON" in err and "--skip-bad" in err and not out.exists()

    assert cli_main([*base, "--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert f"skipped {path}:5: invalid JSON" in captured.err and f"skipped {path}:8: image not found" in captured.err
    assert "10 cases scored" in captured.out and "2 bad line(s) skipped" in captured.out
    data = json.loads((out / "results.json").read_text())
    assert [b["line"] for b in data["skipped_lines"]] == [5, 8] and data["cases"] == 10
    assert "Skipped lines (2)" in (out / "report.html").read_text()
