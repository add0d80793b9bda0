"""Fixtures for the session tests: one tiny fp32 Cobra shared by all of them (managers are per test)."""

import pytest
import torch

from cobra_app.pipeline import Cobra
from tests.helpers import make_tiny_vlm, sample_image


@pytest.fixture(scope="session")
def cobra():
    vlm, tokenizer = make_tiny_vlm()
    return Cobra(vlm.requires_grad_(False), tokenizer, "tiny")


@pytest.fixture
def image():
    return sample_image()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy shared CPU OpenMP's spinning makes them many
    times slower; run these tests on one thread (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
