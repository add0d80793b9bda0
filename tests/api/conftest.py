"""Fixtures for the API's tests: a tiny fp32 Cobra (random weights), an image, the launched apps' model, and the
backends an API serves (the reference, and the store-backed session manager)."""

import pytest

from tests.helpers import make_tiny_cobra, one_torch_thread, sample_image  # noqa: F401 - one_torch_thread: a fixture
from tests.ui.conftest import app_model_dir, tiny_model_dir  # noqa: F401 - the launched apps' model, as the UI's tests


@pytest.fixture(scope="session")
def cobra():
    return make_tiny_cobra()


@pytest.fixture
def image():
    return sample_image(48, 32, seed=1)


@pytest.fixture(autouse=True)
def _single_thread(request):
    """Every API test runs its tiny model on one torch thread."""
    request.getfixturevalue("one_torch_thread")


def _sessions_backend(model, max_context_tokens=None):
    from cobra_app.sessions import SessionManager

    return SessionManager(model, memory_budget_bytes=50 * 10**6, max_context_tokens=max_context_tokens)


def _reference_backend(model, max_context_tokens=None):
    from cobra_app.api.reference import ReferenceBackend

    return ReferenceBackend(model, max_context_tokens=max_context_tokens)


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
