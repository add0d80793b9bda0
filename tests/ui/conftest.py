"""Fixtures for the app's tests: one tiny fp32 Cobra (random weights) for the handler tests, and a model directory for
the tests that launch the app (the offline demo model when it is present, else the tiny model saved to disk)."""

import pytest

from cobra_app.loading import save_model_dir
from cobra_app.pipeline import Cobra
from tests.helpers import make_tiny_vlm, sample_image
from tests.ui.support import DEMO_MODEL, RecordingNotifier


@pytest.fixture(scope="session")
def tiny_cobra():
    vlm, tokenizer = make_tiny_vlm()
    return Cobra(vlm.requires_grad_(False), tokenizer, "tiny")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    vlm, tokenizer = make_tiny_vlm()
    return save_model_dir(vlm, tokenizer, tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def app_model_dir(tiny_model_dir):
    """What launched apps serve: the offline demo model (the app's real fallback) when present."""
    return DEMO_MODEL if DEMO_MODEL.is_dir() else tiny_model_dir


@pytest.fixture(scope="session")
def model_reply(app_model_dir):
    """The served model's own greedy reply, computed here: fn(image, question, max_new_tokens) -> stripped text. Apps
    under test must show exactly this for a greedy turn (whether it is right is the model's business, not the UI's)."""
    from cobra_app.pipeline import load

    cobra = load(app_model_dir, device="cpu")
    return lambda image, question, max_new_tokens: cobra.generate(image, question,
                                                                  max_new_tokens=max_new_tokens).strip()


MAX_BYTES, MAX_PIXELS = 2 * 10**6, 4 * 10**6  # the image caps of the handler tests


@pytest.fixture
def notes():
    """Records the notices the handlers raise (instead of Gradio's toasts)."""
    return RecordingNotifier()


@pytest.fixture
def manager(tiny_cobra):
    from cobra_app.sessions import SessionManager

    return SessionManager(tiny_cobra, memory_budget_bytes=50 * 10**6, max_context_tokens=200)


@pytest.fixture
def ui(manager, notes):
    """The handler layer the UI and the API call, on the tiny model."""
    from cobra_app.ui.handlers import ChatHandlers
    from cobra_app.images import ImageLimits

    return ChatHandlers(manager, notifier=notes, image_limits=ImageLimits(max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS))


@pytest.fixture
def png(tmp_path):
    """A small PNG on disk, as Gradio hands uploads to the handlers."""
    path = tmp_path / "a.png"
    sample_image(48, 32, seed=1).save(path)
    return str(path)
