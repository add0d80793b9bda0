"""Fixtures for the app's tests: one tiny fp32 Cobra (random weights) for the handler tests, and a model directory for
the tests that launch the app (the offline demo model when it is present, else the tiny model saved to disk)."""

import pytest

from cobra_app.loading import LoadedModel, save_model_dir
from cobra_app.pipeline import Cobra
from tests.helpers import make_tiny_vlm
from tests.ui.support import DEMO_MODEL


@pytest.fixture(scope="session")
def tiny_cobra():
    vlm, tokenizer = make_tiny_vlm()
    return Cobra(LoadedModel(vlm.requires_grad_(False), tokenizer, "tiny"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    vlm, tokenizer = make_tiny_vlm()
    return save_model_dir(vlm, tokenizer, tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def app_model_dir(tiny_model_dir):
    """What launched apps serve: the offline demo model (the app's real fallback) when present."""
    return DEMO_MODEL if DEMO_MODEL.is_dir() else tiny_model_dir
