"""The load-time benchmark's timed load: a fresh process on a release-layout run and its hub cache, offline, whose
fingerprint is the loaded model's tensors (checked against a load in this process)."""

import hashlib
from pathlib import Path

import pytest
import torch

from cobra_app import load
from cobra_app.bench.load_time import time_load
from cobra_app.bench.release_run import release_checkpoint, write_llm_repo, write_run_dir
from tests.helpers import make_tiny_vlm, offline_hub_cache

ROOT = Path(__file__).resolve().parents[2]


def fingerprint(vlm) -> str:
    digest = hashlib.sha256()
    for name, t in vlm.state_dict().items():
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()


@pytest.mark.slow  # two fresh processes
def test_timed_load_reports_the_loaded_model(tmp_path, monkeypatch):
    vlm, tokenizer = make_tiny_vlm()
    cache = tmp_path / "hub"
    write_llm_repo(cache, "xiuyul/mamba-2.8b-zephyr", vlm.config.llm, tokenizer)  # the release's LLM repo, tiny
    run = write_run_dir(tmp_path / "run", vlm, "mamba-2.8b-zephyr", release_checkpoint(vlm, with_vision=True))
    offline_hub_cache(monkeypatch, cache)
    expected = fingerprint(load(run, device="cpu", dtype="float32").vlm)
    for mmap in (False, True):
        result = time_load(run, cache, ROOT, "float32", mmap)
        assert result["fingerprint"] == expected and result["parameters"] == sum(p.numel() for p in vlm.parameters())
        assert result["seconds"] > 0 and result["peak_rss_bytes"] > 0
