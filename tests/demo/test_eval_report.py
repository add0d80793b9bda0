"""Spec: the report lands between its markers, one section per evaluation set, and says how the weights are stored."""

import torch
from safetensors.torch import save_file

from cobra_app.demo.eval_report import BEGIN, END, ItemResult, outcome_markdown, storage_dtype, summarise, write_report


def test_report_replaces_only_its_own_section(tmp_path):
    doc = tmp_path / "DEMO.md"
    doc.write_text("# Title\n\nHand-written text.\n")
    write_report(doc, "first table")
    write_report(doc, "second table")
    text = doc.read_text()
    assert text.startswith("# Title\n\nHand-written text.\n")
    assert "second table" in text and "first table" not in text
    assert text.count(BEGIN) == 1 and text.count(END) == 1


class Outcome:
    name, title, seconds, targets = "absent", "About absent objects", 3.0, {"all": 0.9}

    def __init__(self, results):
        self.results, self.rows = results, summarise(results)


def test_a_sets_section_has_its_table_and_says_which_targets_it_missed():
    right = ItemResult("colour", ("absent",), "What colour is the cross?", "There is no cross.", "There is no cross.",
                       True)
    wrong = ItemResult("shape", ("absent",), "What shape is the red object?", "There is no red object.", "A circle.",
                       False)
    text = "\n".join(outcome_markdown(Outcome([right, right, wrong])))
    assert text.startswith("### absent: About absent objects")
    assert "| **all** | 3 | 2 | 66.7% | ≥ 90% ✗ |" in text and "&nbsp;&nbsp;absent" in text
    assert "Targets: missed for all." in text


def test_storage_dtype_is_read_from_the_weights_file(tmp_path):
    save_file({"w": torch.zeros(2, dtype=torch.float16)}, tmp_path / "model.safetensors")
    assert storage_dtype(tmp_path / "model.safetensors") == "F16"
