"""Fixtures for the probe tests: a tiny random Cobra saved as a model directory."""

from pathlib import Path

import pytest

from tests.helpers import make_tiny_vlm


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from cobra_app.loading import save_model_dir

    vlm, tokenizer = make_tiny_vlm(seed=3)
    return save_model_dir(vlm, tokenizer, tmp_path_factory.mktemp("probe-model") / "tiny")


@pytest.fixture(scope="session")
def cobra(tiny_model_dir):
    from cobra_app import load

    return load(tiny_model_dir, device="cpu")
