"""Loading: release layout (hub and run dir), self-contained model dirs, key checks, safe unpickling, offline."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import cobra_app.loading.hub as hub
from cobra_app.loading import CheckpointError, ModelUnavailableError, load, save_model_dir
from cobra_app.loading.registry import LLM_BACKBONES, MODELS, LLMBackboneSpec, ReleaseSpec
from cobra_app.model.cobra import CobraVLM
from tests.helpers import make_tiny_vlm, sample_image


def release_checkpoint(vlm: CobraVLM, with_vision: bool = True) -> dict:
    """The release's pickle layout: {"model": {"projector": ..., "llm_backbone": {"llm.<key>": ...}}}."""
    parts = {
        "projector": vlm.projector.state_dict(),
        "llm_backbone": {f"llm.{k}": v for k, v in vlm.llm.state_dict().items()},
    }
    if with_vision:  # the cobra+3b release has frozen (hub) vision weights; a run that trained them saves them
        parts["vision_backbone"] = vlm.vision_backbone.state_dict()
    return {"model": parts}


def write_run_dir(vlm: CobraVLM, run_dir: Path, checkpoint: dict | None = None) -> Path:
    cfg = vlm.config
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"model": {
        "model_id": cfg.model_id, "arch_specifier": cfg.arch_specifier, "vision_backbone_id": cfg.vision_backbone_id,
        "llm_backbone_id": "tiny-mamba-zephyr", "image_resize_strategy": "resize-naive", "llm_max_length": 256,
    }}))
    torch.save(checkpoint or release_checkpoint(vlm), run_dir / "checkpoints" / "latest-checkpoint.pt")
    return run_dir


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A local stand-in for the hub: files under <root>/<owner>/<repo>/<filename>; nothing is downloaded.
    Registers a tiny LLM backbone whose mamba_ssm config.json and tokenizer live there."""
    root = tmp_path / "hub"
    vlm, tokenizer = make_tiny_vlm()
    llm_repo = root / "tiny" / "mamba-zephyr"
    llm_repo.mkdir(parents=True)
    llm = vlm.config.llm
    (llm_repo / "config.json").write_text(json.dumps({
        "d_model": llm.d_model, "n_layer": llm.n_layer, "vocab_size": llm.vocab_size,
        "ssm_cfg": {"d_state": llm.d_state}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
        "pad_vocab_size_multiple": 8, "tie_embeddings": True,
    }))
    tokenizer.save_pretrained(llm_repo)
    monkeypatch.setitem(LLM_BACKBONES, "tiny-mamba-zephyr", LLMBackboneSpec("tiny/mamba-zephyr", "tiny/mamba-zephyr", "zephyr"))

    def fake_download(repo_id: str, filename: str) -> str:
        path = root / repo_id / filename
        if not path.is_file():
            raise FileNotFoundError(f"404 {repo_id}/{filename}")
        return str(path)

    monkeypatch.setattr(hub, "hf_hub_download", fake_download)
    return root, vlm, tokenizer


def same_outputs(a: CobraVLM, b: CobraVLM) -> bool:
    pixels = {k: v[None] for k, v in a.image_transform(sample_image()).items()}
    ids = torch.tensor([[5, 17, 42, 7]])
    with torch.no_grad():
        la, _ = a.prefill(ids, a.encode_images(pixels), logits_to_keep=4)
        lb, _ = b.prefill(ids, b.encode_images(pixels), logits_to_keep=4)
    return torch.equal(la, lb)


def test_registry_id_loads_release_layout_through_the_hub(fake_hub, monkeypatch):
    root, vlm, _ = fake_hub
    write_run_dir(vlm, root / "owner" / "cobra" / "tiny+1m")
    monkeypatch.setitem(MODELS, "tiny+1m", ReleaseSpec("owner/cobra", "tiny+1m", vlm.config))
    loaded = load("tiny+1m", device="cpu", dtype="float32")
    assert same_outputs(loaded.vlm, vlm)
    assert loaded.config.prompt_format == "zephyr" and loaded.config.llm_max_length == 256


def test_local_run_dir_in_release_layout_loads(fake_hub, tmp_path):
    _, vlm, _ = fake_hub
    run_dir = write_run_dir(vlm, tmp_path / "run")
    assert same_outputs(load(run_dir, device="cpu", dtype="float32").vlm, vlm)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda sd: sd["model"]["llm_backbone"].pop("llm.backbone.layers.1.mixer.A_log"), "missing keys: backbone.layers.1.mixer.A_log"),
        (lambda sd: sd["model"]["projector"].update({"projector.9.weight": torch.zeros(1)}), "unexpected keys: projector.9.weight"),
        (lambda sd: sd["model"]["projector"].update({"projector.2.weight": torch.zeros(3, 3)}), r"mis-shaped keys: projector.2.weight \(checkpoint \(3, 3\)"),
    ],
)
def test_bad_keys_fail_with_their_names(fake_hub, tmp_path, corrupt, message):
    _, vlm, _ = fake_hub
    checkpoint = release_checkpoint(vlm)
    corrupt(checkpoint)
    run_dir = write_run_dir(vlm, tmp_path / "run", checkpoint)
    with pytest.raises(CheckpointError, match=message):
        load(run_dir, device="cpu")


class Payload:
    """An object whose unpickling would run code."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/cobra_pwned",))


def test_pickle_carrying_code_is_refused(fake_hub, tmp_path):
    _, vlm, _ = fake_hub
    checkpoint = release_checkpoint(vlm)
    checkpoint["model"]["payload"] = Payload()
    run_dir = write_run_dir(vlm, tmp_path / "run", checkpoint)
    Path("/tmp/cobra_pwned").unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load(run_dir, device="cpu")
    assert not Path("/tmp/cobra_pwned").exists()


def test_self_contained_model_dir_roundtrip(tmp_path):
    vlm, tokenizer = make_tiny_vlm()
    out = save_model_dir(vlm, tokenizer, tmp_path / "model")
    assert sorted(p.name for p in out.iterdir()) >= ["config.json", "model.safetensors"]
    loaded = load(out, device="cpu", dtype="float32")
    assert same_outputs(loaded.vlm, vlm)
    assert loaded.tokenizer.encode("a red circle") == tokenizer.encode("a red circle")
    assert loaded.vlm.llm.lm_head.weight is loaded.vlm.llm.backbone.embedding.weight


def test_model_dir_from_a_hub_path(fake_hub):
    root, vlm, tokenizer = fake_hub
    save_model_dir(vlm, tokenizer, root / "someone" / "tiny-cobra")
    assert same_outputs(load("someone/tiny-cobra", device="cpu", dtype="float32").vlm, vlm)


def test_load_casts_to_requested_dtype(tmp_path):
    vlm, tokenizer = make_tiny_vlm()
    loaded = load(save_model_dir(vlm, tokenizer, tmp_path / "m"), device="cpu", dtype="bfloat16")
    assert loaded.vlm.llm.lm_head.weight.dtype == torch.bfloat16
    assert loaded.vlm.llm.backbone.layers[0].mixer.A_log.dtype == torch.float32
    assert not any(p.requires_grad for p in loaded.vlm.parameters())


def test_unknown_sources_are_explained(tmp_path):
    with pytest.raises(ValueError, match="neither a Cobra Chat model directory nor a run directory"):
        load(tmp_path)
    with pytest.raises(ValueError, match="unknown model"):
        load("no-such-model")


def test_offline_missing_hub_file_fails_fast_and_says_what_was_tried(tmp_path):
    """The real hub path, offline with an empty cache: a clear error within seconds, no download attempted."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code = "from cobra_app.loading import load\nload('cobra+3b')"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "ModelUnavailableError" in proc.stderr
    assert "han1997/cobra" in proc.stderr and "cobra+3b/config.json" in proc.stderr
    assert time.monotonic() - start < 60  # interpreter start-up and imports included


def test_hub_error_is_wrapped(monkeypatch):
    def offline(repo_id, filename):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(hub, "hf_hub_download", offline)
    with pytest.raises(ModelUnavailableError, match="'config.json' from the Hugging Face hub repo 'a/b'.*no route"):
        hub.hub_file("a/b", "config.json")


def test_random_model_at_cobra_3b_sizes_on_meta():
    """The real sizes: 3.5 B parameters (Mamba 2.77 B, vision 0.73 B, projector 0.05 B) - checked without memory."""
    with torch.device("meta"):
        vlm = CobraVLM(MODELS["cobra+3b"].config)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert abs(count(vlm.llm) / 1e9 - 2.77) < 0.01
    assert abs(count(vlm.vision_backbone) / 1e9 - 0.73) < 0.02
    assert abs(count(vlm.projector) / 1e9 - 0.05) < 0.01
