"""The speed benchmark runs end to end on a tiny model and reports every figure the performance targets need; every
option its help lists works, each exercised here at small values."""

import json

import pytest

from cobra_app.bench.release_run import release_checkpoint, write_run_dir
from cobra_app.bench.run import build_parser, main
from cobra_app.demo.model_config import tiny_config
from cobra_app.demo.tokenizer import build_demo_tokenizer
from cobra_app.loading import save_model_dir
from cobra_app.loading.registry import MODELS, ReleaseSpec
from tests.helpers import TINY_LLM_BACKBONE, make_tiny_vlm, offline_hub_cache, register_tiny_llm

SMALL = ["--prefill-tokens", "40", "--decode-steps", "2", "--rounds", "2", "--repeats", "1", "--reply-tokens", "3"]
FILE_OPTIONS = ("--llm", "--vision-weights")  # a release-layout run's own files (test_a_release_layout_run...)
# each run's own options, beyond SMALL, --model and --out (used by every run)
RUNS = {
    # once an IndexError after measuring
    "turns 6": ["--turns", "6", "--batch-sizes", "1", "4", "--device", "cpu", "--no-peer-prefill"],
    "one turn, no peer": ["--turns", "1", "--no-peer", "--batch-sizes", "2", "--dtype", "float32"],
    "no turns": ["--no-turns", "--no-peer", "--no-int8", "--batch-sizes", "3", "--dtype", "bfloat16", "--decode-steps", "1",
                 "--rounds", "1"],
}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    vlm, tokenizer = make_tiny_vlm()
    return save_model_dir(vlm, tokenizer, tmp_path_factory.mktemp("bench") / "tiny")


def run(model, out, options) -> dict:
    assert main(["--model", str(model), *SMALL, *options, "--out", str(out)]) == 0
    return json.loads((out / "bench.json").read_text())


def test_benchmark_reports_figures_ratios_and_plot(model, tmp_path, capsys):
    out = tmp_path / "bench"
    report = run(model, out, ["--turns", "8", "--batch-sizes", "1", "4"])
    for key in ("matmul_gflops_float32", "copy_gbs", "image_encode_s", "image_encode_gflop", "prefill_tok_s",
                "decode_tok_s", "int8_decode_tok_s", "peer_prefill_tok_s", "peer_decode_tok_s", "state_bytes",
                "batched_decode_4_tok_s", "peak_rss_gb"):
        assert report["figures"][key] > 0, key
    assert report["figures"]["int8_lm_weight_bytes"] < report["figures"]["lm_weight_bytes"]
    assert set(report["ratios"]) == {
        "image encoding / its time at the fp32 matmul ceiling", "prefill / its matmuls' time at the fp32 ceiling",
        "decode / bandwidth floor", "prefill / matmul ceiling (compute dtype)", "int8 decode vs ours",
        "int8 decode / its bandwidth floor", "decode vs transformers", "prefill vs transformers",
        "TTFT last turn / turn 2", "release / sessions TTFT at turn 8", "batched decode 4 / 1",
        "transformers' decode / bandwidth floor"}
    ratios = {name: ratio["value"] for name, ratio in report["ratios"].items()}
    assert ratios["decode vs transformers"] == pytest.approx(
        ratios["decode / bandwidth floor"] / ratios["transformers' decode / bandwidth floor"])
    figures = report["figures"]
    assert ratios["prefill / its matmuls' time at the fp32 ceiling"] == pytest.approx(
        figures["matmul_gflops_float32"] / figures["prefill_matmul_gflops"])
    assert len(report["per_turn"]["sessions_ttft_s"]) == 8 and report["per_turn"]["release_ttft_s"][7] > 0
    assert (out / "ttft_per_turn.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "decode vs transformers" in printed and "cpu: " in printed and "kernels: " in printed
    assert report["model"]["compute_dtype"] == "float32" and "precision: float32" in printed


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUNS))
def test_every_option_works_at_small_values(model, tmp_path, name):
    options = RUNS[name]
    report = run(model, tmp_path, options)
    turns = 0 if "--no-turns" in options else int(options[options.index("--turns") + 1])
    assert len(report["per_turn"].get("sessions_ttft_s", [])) == turns
    assert ("TTFT last turn / turn 2" in report["ratios"]) == (turns >= 2)
    assert "release / sessions TTFT at turn 8" not in report["ratios"]  # fewer than 8 turns
    assert ("peer_decode_tok_s" in report["figures"]) == ("--no-peer" not in options)
    batches = options[options.index("--batch-sizes") + 1:]
    batches = batches[: next((i for i, b in enumerate(batches) if b.startswith("--")), len(batches))]
    assert sorted(k for k in report["figures"] if k.startswith("batched_decode_")) == sorted(
        f"batched_decode_{b}_tok_s" for b in batches)
    if "--dtype" in options:
        assert report["model"]["dtype"] == options[options.index("--dtype") + 1]
    assert (tmp_path / "ttft_per_turn.png").exists() == (turns > 0)


@pytest.mark.slow
def test_random_weights_at_a_registered_models_sizes(tmp_path, monkeypatch):
    """--model random:<id>: the default (random weights at cobra+3b's sizes), here at a tiny registered size (its
    vocabulary holds the demo tokenizer's ids, which the benchmark reads, as cobra+3b's does)."""
    monkeypatch.setitem(MODELS, "tiny", ReleaseSpec("nowhere/tiny", "tiny", tiny_config(vocab_size=len(build_demo_tokenizer()))))
    report = run("random:tiny", tmp_path, ["--no-turns", "--no-peer", "--batch-sizes", "1"])
    assert report["model"]["dtype"] == "bfloat16" and report["figures"]["decode_tok_s"] > 0


@pytest.mark.slow
def test_a_release_layout_run_with_its_own_llm_and_vision_files(tmp_path, monkeypatch, caplog):
    """--llm DIR and --vision-weights DIR reach the loading of a release-layout run (here one holding its own vision
    weights, so the vision files are named in a warning and not used)."""
    vlm, tokenizer = make_tiny_vlm()
    offline_hub_cache(monkeypatch, tmp_path / "empty-cache")
    register_tiny_llm(monkeypatch)
    run_dir = write_run_dir(tmp_path / "run", vlm, TINY_LLM_BACKBONE, release_checkpoint(vlm, with_vision=True))
    llm = tmp_path / "llm"
    tokenizer.save_pretrained(llm)
    (llm / "config.json").write_text(json.dumps(vlm.config.llm.to_mamba_ssm()))
    llm_flag, vision_flag = FILE_OPTIONS
    options = [llm_flag, str(llm), vision_flag, str(tmp_path / "towers"), "--no-turns", "--no-peer", "--batch-sizes", "1"]
    assert run(run_dir, tmp_path / "out", options)["figures"]["decode_tok_s"] > 0
    assert f"the vision weights in {tmp_path / 'towers'} are not used" in caplog.text


def test_the_runs_here_use_every_option_the_help_lists():
    used = {"--model", "--out", *SMALL, *FILE_OPTIONS, *(o for options in RUNS.values() for o in options)}
    unused = [a.option_strings for a in build_parser()._actions if a.option_strings and "--help" not in a.option_strings
              and not used & set(a.option_strings)]
    assert unused == []


@pytest.mark.parametrize("bad", [["--turns", "0"], ["--batch-sizes", "1", "-2"], ["--rounds", "x"]])
def test_values_that_cannot_be_measured_are_refused_up_front(bad, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(bad)
    assert exit_.value.code == 2 and "--" in capsys.readouterr().err


def test_a_model_loaded_as_int8_is_benchmarked_as_it_is_without_an_int8_copy_or_a_peer(model, tmp_path, capsys):
    report = run(model, tmp_path, ["--dtype", "int8", "--no-turns", "--no-peer-prefill", "--batch-sizes", "1"])
    assert report["model"]["dtype"] == "int8" and "int8_decode_tok_s" not in report["figures"]
    assert not {"peer_decode_tok_s", "peer_prefill_tok_s"} & set(report["figures"])
    printed = capsys.readouterr().out
    assert report["figures"]["decode_tok_s"] > 0 and "precision: int8 weights" in printed
    assert "MambaForCausalLM skipped: it has no int8 weights" in printed
