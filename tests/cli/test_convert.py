"""`python -m cobra_app convert`: a release-layout run becomes a self-contained model directory that loads with no
other file and no network, with the same weights, logits and tokenizer."""

import json

import pytest
import torch

from cobra_app import load
from cobra_app.__main__ import main as cobra_main
from cobra_app.bench.release_run import release_checkpoint, write_run_dir
from tests.helpers import (
    TINY_LLM_BACKBONE,
    make_tiny_vlm,
    offline_hub_cache,
    publish_tiny_llm,
    refuse_network,
    sample_image,
)


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A tiny run in the release layout, its LLM files in an offline hub cache; (run dir, cache)."""
    vlm, tokenizer = make_tiny_vlm(seed=2)
    cache = tmp_path / "hub"
    offline_hub_cache(monkeypatch, cache)
    publish_tiny_llm(monkeypatch, cache, vlm, tokenizer)
    return write_run_dir(tmp_path / "run", vlm, TINY_LLM_BACKBONE, release_checkpoint(vlm, with_vision=True)), cache


def logits(cobra) -> torch.Tensor:
    ids = cobra.turns.user_turn_ids("Is the cup left of the plate?", first=True)
    out, _ = cobra.vlm.prefill(torch.tensor([ids]), cobra.encode_image(sample_image()), logits_to_keep=len(ids))
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_round_trip_keeps_weights_logits_and_tokenizer(run, tmp_path, monkeypatch, capsys, dtype):
    run_dir, cache = run
    original = load(run_dir, device="cpu", dtype=dtype)
    out = tmp_path / "converted"
    assert cobra_main(["convert", str(run_dir), str(out), "--dtype", dtype]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["format"] == "cobra-chat-model/1"
    cache.rename(tmp_path / "hub-gone")  # the model directory needs nothing else
    calls = refuse_network(monkeypatch)
    converted = load(out, device="cpu", dtype=dtype)
    for (key, a), b in zip(converted.vlm.state_dict().items(), original.vlm.state_dict().values(), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), key
    assert torch.equal(logits(converted), logits(original))
    text = "<|user|>\nCafé 🙂, 3.14 and  two   spaces<|endoftext|>"
    assert converted.tokenizer.encode(text) == original.tokenizer.encode(text)
    assert converted.turns.user_turn_ids(text, first=False) == original.turns.user_turn_ids(text, first=False)
    assert converted.config == original.config
    assert calls == []


def test_a_converted_bf16_directory_is_half_the_size(run, tmp_path):
    run_dir, _ = run
    sizes = {}
    for dtype in ("float32", "bfloat16"):
        assert cobra_main(["convert", str(run_dir), str(tmp_path / dtype), "--dtype", dtype]) == 0
        sizes[dtype] = (tmp_path / dtype / "model.safetensors").stat().st_size
    assert sizes["bfloat16"] < 0.6 * sizes["float32"]


def test_llm_files_given_on_the_command_line(run, tmp_path, capsys):
    run_dir, cache = run
    llm_dir = next(cache.glob("models--tiny--mamba-zephyr/snapshots/*"))
    cache.rename(tmp_path / "elsewhere")
    assert cobra_main(["convert", str(run_dir), str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "config.json" in err and "--llm" in err and "COBRA_LLM" in err
    llm_dir = tmp_path / "elsewhere" / llm_dir.relative_to(cache)
    assert cobra_main(["convert", str(run_dir), str(tmp_path / "b"), "--llm", str(llm_dir)]) == 0


def test_an_existing_directory_is_never_overwritten_and_failures_leave_nothing(run, tmp_path, monkeypatch, capsys):
    run_dir, _ = run
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert cobra_main(["convert", str(run_dir), str(taken)]) == 2
    assert "not empty" in capsys.readouterr().err and [p.name for p in taken.iterdir()] == ["notes.txt"]

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr("cobra_app.loading.save_model_dir", disk_full)
    assert cobra_main(["convert", str(run_dir), str(tmp_path / "new")]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".new.partial-*"))
    assert cobra_main(["convert", str(run_dir), str(tmp_path / "x"), "--dtype", "float8"]) == 2
