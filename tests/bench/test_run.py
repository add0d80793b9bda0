"""The speed benchmark runs end to end on a tiny model and reports every figure the performance targets need."""

import json

import pytest

from cobra_app.bench.run import main
from cobra_app.loading import save_model_dir
from tests.helpers import make_tiny_vlm


def test_benchmark_reports_figures_ratios_and_plot(tmp_path, capsys):
    vlm, tokenizer = make_tiny_vlm()
    model = save_model_dir(vlm, tokenizer, tmp_path / "tiny")
    out = tmp_path / "bench"
    assert main(["--model", str(model), "--prefill-tokens", "40", "--decode-steps", "2", "--rounds", "2",
                 "--repeats", "1", "--turns", "8", "--reply-tokens", "3", "--batch-sizes", "1", "4",
                 "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    for key in ("matmul_gflops_model_dtype", "copy_gbs", "image_encode_s", "prefill_tok_s", "decode_tok_s",
                "peer_prefill_tok_s", "peer_decode_tok_s", "state_bytes", "batched_decode_4_tok_s", "peak_rss_gb"):
        assert report["figures"][key] > 0, key
    assert set(report["ratios"]) == {
        "decode / bandwidth floor", "prefill / bf16 matmul ceiling", "decode vs transformers", "prefill vs transformers",
        "TTFT last turn / turn 2", "release / sessions TTFT at turn 8", "batched decode 4 / 1",
        "transformers' decode / bandwidth floor"}
    ratios = {name: ratio["value"] for name, ratio in report["ratios"].items()}
    assert ratios["decode vs transformers"] == pytest.approx(
        ratios["decode / bandwidth floor"] / ratios["transformers' decode / bandwidth floor"])
    assert len(report["per_turn"]["sessions_ttft_s"]) == 8 and report["per_turn"]["release_ttft_s"][7] > 0
    assert (out / "ttft_per_turn.png").stat().st_size > 1000
    assert "decode vs transformers" in capsys.readouterr().out
