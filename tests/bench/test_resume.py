"""Smoke test of the restart benchmark (the benchmark itself is a script, not a test)."""

import io

from cobra_app.bench.resume import run
from cobra_app.bench.turns import synthetic_image
from cobra_app.pipeline import Cobra
from tests.helpers import make_tiny_vlm


def test_the_benchmark_resumes_the_same_point_from_memory_and_from_disk(tmp_path):
    vlm, tokenizer = make_tiny_vlm()
    out = io.StringIO()
    medians = run(Cobra(vlm, tokenizer, "tiny"), synthetic_image(), tmp_path, repeats=2, out=out)
    rows = [line.split("|") for line in out.getvalue().splitlines() if line[:6].strip().isdigit()]
    assert [row[1].strip() for row in rows] == ["memory", "disk, warm", "disk, cold"] * 2
    counts = {tuple(row[2].split()) for row in rows}  # prompt, cached, read: the same for every way
    assert len(counts) == 1 and 0 < int(next(iter(counts))[1]) < int(next(iter(counts))[0])
    assert set(medians) == {"memory", "disk, warm", "disk, cold", "disk, warm / memory", "disk, cold / memory"}
    assert "resume after a restart / memory hit" in out.getvalue()
