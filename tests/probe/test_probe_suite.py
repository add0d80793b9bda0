"""Suite parsing: fields and defaults, clear errors with the line number, --skip-bad skipping and counting."""

import json

import pytest

from cobra_app.probe import SuiteError, load_suite
from tests.probe.probe_helpers import write_suite

GOOD = {"image": "images/img0.png", "question": "Is there a dog?", "answer": "Yes", "answers": "yes-no",
        "category": "exist", "tags": ["a", "b"]}


def test_fields_defaults_and_paths(tmp_path):
    absolute = tmp_path / "images" / "img2.png"
    path = write_suite(tmp_path, [
        GOOD,
        "",  # blank lines are ignored (line numbers still count them)
        {"image": "images/img1.png", "question": "  The cup is on the plate. ", "answer": "false"},
        {"image": str(absolute), "question": "Is it red?", "answer": "no", "id": "custom"},
    ])
    suite = load_suite(path)
    assert [c.line for c in suite.cases] == [1, 3, 4] and suite.bad_lines == []
    first, second, third = suite.cases
    assert first.image_path == tmp_path / "images" / "img0.png" and first.tags == ("a", "b")
    assert (first.answer, first.answers, first.category, first.id, first.positive) == ("Yes", "yes-no", "exist",
                                                                                          "line-1", True)
    # the pair is inferred from the answer, the answer canonicalised, the statement stripped
    assert (second.answer, second.answers, second.question, second.positive) == ("False", "true-false",
                                                                                 "The cup is on the plate.", False)
    assert second.category == "uncategorized" and second.tags == ()
    assert third.image_path == absolute and third.id == "custom" and third.answer == "No"


BAD_LINES = [
    ('{"image": "images/img0.png", "question": "Is there a dog?", "answer": "Yes"', "invalid JSON"),
    ('["images/img0.png", "Is there a dog?", "Yes"]', "expected a JSON object, got list"),
    ({"image": "images/img0.png", "answer": "Yes"}, "missing required field(s) 'question'"),
    ({**GOOD, "questoin": "typo"}, "unknown field(s) 'questoin'"),
    ({**GOOD, "answers": "maybe-not"}, "unknown answers 'maybe-not'"),
    ({**GOOD, "answer": "True"}, "answer 'True' is not a valid answer for answers 'yes-no'"),
    ({"image": "images/img0.png", "question": "Is there a dog?", "answer": "Maybe"},
     "answer 'Maybe' is not a valid answer: use 'Yes' or 'No' or 'True' or 'False'"),
    ({**GOOD, "tags": "a,b"}, "field 'tags' must be a list of strings"),
    ({**GOOD, "question": 3}, "field 'question' must be a string"),
    ({**GOOD, "question": "  "}, "field 'question' is empty"),
    ({**GOOD, "image": "images/nope.png"}, "image not found"),
    ({**GOOD, "image": "notes.txt"}, "cannot be read"),
]


@pytest.mark.parametrize("bad, message", BAD_LINES, ids=[m for _, m in BAD_LINES])
def test_bad_line_names_its_line_number(tmp_path, bad, message):
    (tmp_path / "notes.txt").write_text("not an image")
    path = write_suite(tmp_path, [GOOD, GOOD | {"id": "two"}, bad, GOOD | {"id": "four"}])
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert info.value.line == 3
    assert str(info.value).startswith(f"{path}:3: ") and message in str(info.value)


def test_duplicate_id_names_both_lines(tmp_path):
    path = write_suite(tmp_path, [GOOD | {"id": "x"}, GOOD | {"id": "y"}, GOOD | {"id": "x"}])
    with pytest.raises(SuiteError, match=r":3: duplicate id 'x' \(first used on line 1\)"):
        load_suite(path)


def test_skip_bad_keeps_the_rest_and_counts_the_skipped(tmp_path):
    rows = [GOOD, "{not json", GOOD | {"id": "b"}, {**GOOD, "image": "images/missing.png"}, "", GOOD | {"id": "c"},
            {**GOOD, "answer": "Perhaps"}]
    path = write_suite(tmp_path, rows)
    suite = load_suite(path, skip_bad=True)
    assert [c.line for c in suite.cases] == [1, 3, 6]
    assert [b.line for b in suite.bad_lines] == [2, 4, 7]
    assert "invalid JSON" in suite.bad_lines[0].message and "image not found" in suite.bad_lines[1].message
    with pytest.raises(SuiteError, match=":2: invalid JSON"):  # without the flag the first bad line stops it
        load_suite(path)


def test_a_suite_without_any_valid_case_is_an_error_even_when_skipping(tmp_path):
    path = write_suite(tmp_path, ["{", {"image": "images/missing.png", "question": "q", "answer": "Yes"}])
    with pytest.raises(SuiteError, match=r"no valid case \(2 bad line\(s\) skipped\)") as info:
        load_suite(path, skip_bad=True)
    assert info.value.line is None
    with pytest.raises(SuiteError, match="suite file not found"):
        load_suite(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(SuiteError, match="no valid case"):
        load_suite(tmp_path / "empty.jsonl")


def test_json_round_trip_of_a_case(tmp_path):
    suite = load_suite(write_suite(tmp_path, [GOOD]))
    d = suite.cases[0].to_dict()
    assert d == {"line": 1, "id": "line-1", "image": "images/img0.png", "question": "Is there a dog?",
                 "answer": "Yes", "answers": "yes-no", "category": "exist", "tags": ["a", "b"]}
    assert json.loads(json.dumps(d)) == d
