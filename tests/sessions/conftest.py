"""Fixtures for the session tests: one tiny fp32 Cobra shared by all of them (managers are per test)."""

import pytest

from cobra_app.pipeline import Cobra
from tests.helpers import make_tiny_vlm, one_torch_thread, sample_image  # noqa: F401 - a fixture


@pytest.fixture(scope="session")
def cobra():
    vlm, tokenizer = make_tiny_vlm()
    return Cobra(vlm.requires_grad_(False), tokenizer, "tiny")


@pytest.fixture
def image():
    return sample_image()


@pytest.fixture(autouse=True)
def _single_thread(request):
    """Every session test runs on one torch thread."""
    request.getfixturevalue("one_torch_thread")
