"""Fixtures for the API's tests: one tiny fp32 Cobra (random weights) and API servers over it, run by uvicorn in a
thread on a free loopback port, reached through the official `openai` client or raw HTTP."""

import pytest
import torch

from cobra_app.pipeline import Cobra
from tests.helpers import make_tiny_vlm, sample_image
from tests.ui.conftest import app_model_dir, tiny_model_dir  # noqa: F401 - the launched apps' model, as the UI's tests


@pytest.fixture(scope="session")
def cobra():
    vlm, tokenizer = make_tiny_vlm()
    return Cobra(vlm.requires_grad_(False), tokenizer, "tiny")


@pytest.fixture
def image():
    return sample_image(48, 32, seed=1)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads (and a busy shared CPU makes OpenMP's spinning costly)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _sessions_backend(cobra, max_context_tokens=None):
    from cobra_app.sessions import SessionManager

    return SessionManager(cobra, memory_budget_bytes=50 * 10**6, max_context_tokens=max_context_tokens)


def _reference_backend(cobra, max_context_tokens=None):
    from cobra_app.api.reference import ReferenceBackend

    return ReferenceBackend(cobra, max_context_tokens=max_context_tokens)


def _has_complete() -> bool:
    from cobra_app.sessions import SessionManager

    return hasattr(SessionManager, "complete")


@pytest.fixture(scope="module", params=[
    "reference",
    pytest.param("sessions", marks=pytest.mark.skipif(not _has_complete(), reason="SessionManager.complete (issue 19, "
                                                      "the state store) has not landed yet")),
])  # fmt: skip
def make_backend(request):
    """A factory (cobra, max_context_tokens=None) -> backend: the reference, and the store-backed session manager."""
    return {"reference": _reference_backend, "sessions": _sessions_backend}[request.param]
