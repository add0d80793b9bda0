"""Spec: the model served: the one asked for, else the offline demo model with a banner saying why and how to get
the real one; real problems are not hidden behind it."""

import pytest

from cobra_app.loading import ModelUnavailableError, save_model_dir
from cobra_app.serving.model_choice import choose_model
from tests.helpers import make_tiny_vlm


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    vlm, tokenizer = make_tiny_vlm()
    return save_model_dir(vlm, tokenizer, tmp_path_factory.mktemp("tiny-model"))


def test_unavailable_model_falls_back_to_the_demo_model_with_a_banner(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    choice = choose_model("cobra+3b", str(tiny_model_dir), device="cpu")
    assert choice.is_fallback and choice.source == str(tiny_model_dir)
    assert choice.cobra.info()["model_id"] == "tiny-cobra"
    banner = choice.banner()
    assert "Offline demo model" in banner and "`cobra+3b` could not be loaded" in banner
    assert "python app.py --model cobra+3b" in banner  # how to get the real one
    direct = choose_model(str(tiny_model_dir), None, device="cpu")
    assert not direct.is_fallback and direct.banner() == ""


def test_no_fallback_means_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ModelUnavailableError, match="demo model .* is missing"):
        choose_model("cobra+3b", str(tmp_path / "nowhere"))

    def broken(*args, **kwargs):
        raise ValueError("checkpoint is corrupt")

    with pytest.raises(ValueError, match="corrupt"):  # real problems are not hidden behind the demo model
        choose_model(str(tmp_path), str(tmp_path), loader=broken)
