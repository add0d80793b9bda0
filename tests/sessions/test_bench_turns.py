"""Smoke test of the turn benchmark (the benchmark itself is a script, not a test)."""

import io

from cobra_app.bench.turns import run, synthetic_image
from cobra_app.generation import SamplingParams


def test_benchmark_prints_each_turn_cached_versus_full_recompute(cobra):
    out = io.StringIO()
    totals = run(cobra, synthetic_image(), 4, SamplingParams(max_new_tokens=5), out=out)
    text = out.getvalue()
    rows = [line for line in text.splitlines() if line[:4].strip().isdigit()]
    assert len(rows) == 4 and all(row.rstrip().endswith("yes") for row in rows)  # same replies both ways
    assert totals["same"] == 4 and totals["cached_tokens"] < totals["full_tokens"]
    assert "full recompute read" in text and "hits=4" in text and "image_encodes=1" in text
