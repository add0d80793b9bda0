"""Loading: release layout (hub cache and run dir, with the LLM files local or from the hub), self-contained model
dirs, key checks, safe unpickling, offline operation, messages for missing files, and the meta-device build."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import cobra_app.loading.hub as hub
from cobra_app import load
from cobra_app.bench.release_run import cache_file, release_checkpoint, write_run_dir
from cobra_app.loading import CheckpointError, ModelUnavailableError, read_model, save_model_dir
from cobra_app.loading.checkpoint import strip_prefix
from cobra_app.loading.registry import MODELS, ReleaseSpec
from cobra_app.model.cobra import CobraVLM
from tests.helpers import TINY_LLM_BACKBONE, TINY_LLM_REPO, make_tiny_vlm, sample_image


def same_outputs(a: CobraVLM, b: CobraVLM) -> bool:
    pixels = {k: v[None] for k, v in a.image_transform(sample_image()).items()}
    ids = torch.tensor([[5, 17, 42, 7]])
    with torch.no_grad():
        la, _ = a.prefill(ids, a.encode_images(pixels), logits_to_keep=4)
        lb, _ = b.prefill(ids, b.encode_images(pixels), logits_to_keep=4)
    return torch.equal(la, lb)


def tiny_run(vlm: CobraVLM, run_dir: Path, checkpoint: dict | None = None) -> Path:
    """The tiny model as a run in the release layout (its towers trained, hence in the checkpoint)."""
    return write_run_dir(run_dir, vlm, TINY_LLM_BACKBONE, checkpoint or release_checkpoint(vlm, with_vision=True))


def publish(cache: Path, local_dir: Path, repo_id: str, prefix: str = "") -> None:
    """Put every file of `local_dir` (recursively) into the hub cache under `repo_id`, as fetching it would have."""
    for path in local_dir.rglob("*"):
        if path.is_file():
            cache_file(cache, repo_id, prefix + path.relative_to(local_dir).as_posix()).write_bytes(path.read_bytes())


def test_registry_id_loads_from_the_hub_cache_offline_without_a_network_call(published, tiny, tmp_path,
                                                                              network_calls, monkeypatch):
    vlm, tokenizer = tiny
    publish(published, tiny_run(vlm, tmp_path / "run"), "owner/cobra", "tiny+1m/")
    monkeypatch.setitem(MODELS, "tiny+1m", ReleaseSpec("owner/cobra", "tiny+1m", vlm.config))
    cobra = load("tiny+1m", device="cpu", dtype="float32")
    assert same_outputs(cobra.vlm, vlm)
    assert cobra.config.prompt_format == "zephyr" and cobra.config.llm_max_length == 256
    assert cobra.tokenizer.encode("a red circle") == tokenizer.encode("a red circle")
    assert network_calls == []


OFFLINE_LOAD = """
import socket, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(args)
    raise OSError("network access attempted")
socket.socket.connect = socket.socket.connect_ex = socket.create_connection = socket.getaddrinfo = refuse
from cobra_app import load
from cobra_app.loading.registry import LLM_BACKBONES, LLMBackboneSpec
LLM_BACKBONES[sys.argv[2]] = LLMBackboneSpec(sys.argv[3], sys.argv[3], "zephyr")
cobra = load(sys.argv[1], device="cpu")
print("loaded", cobra.config.model_id, "network attempts:", len(attempts))
"""


def test_hf_hub_offline_with_a_populated_cache_loads_with_zero_network_calls(published, tiny, tmp_path):
    """The real switch, HF_HUB_OFFLINE=1 in the environment of a fresh process, with every connection refused and
    counted there."""
    run = tiny_run(tiny[0], tmp_path / "run")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(published)}
    proc = subprocess.run([sys.executable, "-c", OFFLINE_LOAD, str(run), TINY_LLM_BACKBONE, TINY_LLM_REPO], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "loaded tiny-cobra network attempts: 0" in proc.stdout


def test_local_run_dir_in_release_layout_loads(published, tiny, tmp_path, network_calls):
    vlm, _ = tiny
    assert same_outputs(load(tiny_run(vlm, tmp_path / "run"), device="cpu", dtype="float32").vlm, vlm)
    assert network_calls == []


def write_llm_dir(vlm: CobraVLM, tokenizer, path: Path) -> Path:
    """A local LLM directory as --llm takes it: mamba_ssm config.json and the tokenizer files."""
    tokenizer.save_pretrained(path)
    (path / "config.json").write_text(json.dumps(vlm.config.llm.to_mamba_ssm()))
    return path


def test_llm_files_from_a_local_directory_or_another_hub_repo(hub_cache, tiny, tmp_path, network_calls):
    """A run whose LLM backbone's repo is not in the (offline) cache: --llm supplies its config and tokenizer."""
    vlm, tokenizer = tiny
    run = tiny_run(vlm, tmp_path / "run")
    with pytest.raises(ModelUnavailableError):
        load(run, device="cpu")
    llm_dir = write_llm_dir(vlm, tokenizer, tmp_path / "llm")
    from_dir = load(run, device="cpu", dtype="float32", llm=llm_dir)
    assert same_outputs(from_dir.vlm, vlm)
    text = "Is the cup left of the plate?"
    assert from_dir.tokenizer.encode(text) == tokenizer.encode(text)
    publish(hub_cache, llm_dir, "someone/mamba-finetune")
    assert same_outputs(load(run, device="cpu", dtype="float32", llm="someone/mamba-finetune").vlm, vlm)
    assert network_calls == []


def test_missing_files_say_which_file_where_it_looked_and_which_flag_supplies_it(hub_cache, tiny, tmp_path):
    vlm, tokenizer = tiny
    run = tiny_run(vlm, tmp_path / "run")
    with pytest.raises(ModelUnavailableError) as exc:
        load(run, device="cpu")  # the LLM backbone's repo is not in the cache
    message = str(exc.value)
    assert f"'config.json' from the Hugging Face hub repo '{TINY_LLM_REPO}'" in message
    assert f"looked in the hub cache {hub_cache}" in message and "--llm (env COBRA_LLM" in message

    llm_dir = write_llm_dir(vlm, tokenizer, tmp_path / "llm")
    (llm_dir / "tokenizer.json").unlink()
    with pytest.raises(ModelUnavailableError, match=rf"has no tokenizer.json \(looked for {llm_dir / 'tokenizer.json'}"
                                                    r"\).*--llm"):
        load(run, llm=llm_dir)
    with pytest.raises(ModelUnavailableError, match=r"LLM directory no/such/dir/here does not exist.*--llm"):
        load(run, llm="no/such/dir/here")
    with pytest.raises(ModelUnavailableError, match=r"no LLM directory .*/models/mamba, so 'models/mamba' was taken "
                                                    r"for a hub repo: could not fetch 'config.json'.*--llm"):
        load(run, llm="models/mamba")

    (run / "checkpoints" / "latest-checkpoint.pt").unlink()
    with pytest.raises(ModelUnavailableError, match=rf"latest-checkpoint.pt not found: looked for "
                                                    rf"{run / 'checkpoints' / 'latest-checkpoint.pt'}.*--model"):
        load(run, llm=tmp_path / "llm")

    model_dir = save_model_dir(vlm, tokenizer, tmp_path / "model")
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ModelUnavailableError, match=rf"model.safetensors not found: looked for {model_dir}"):
        load(model_dir)


def test_llm_and_vision_options_are_refused_for_a_self_contained_model_dir(tiny, tmp_path):
    model_dir = save_model_dir(*tiny, tmp_path / "model")
    with pytest.raises(ValueError, match="self-contained model directory.*release-layout runs only"):
        load(model_dir, llm=tmp_path)


def untie_lm_head(llm_backbone: dict) -> None:
    llm_backbone["llm.lm_head.weight"] = llm_backbone["llm.lm_head.weight"] + 1.0


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda sd: sd["model"]["llm_backbone"].pop("llm.backbone.layers.1.mixer.A_log"), "missing keys: backbone.layers.1.mixer.A_log"),
        (lambda sd: sd["model"]["projector"].update({"projector.9.weight": torch.zeros(1)}), "unexpected keys: projector.9.weight"),
        (lambda sd: sd["model"]["projector"].update({"projector.2.weight": torch.zeros(3, 3)}), r"mis-shaped keys: projector.2.weight \(checkpoint \(3, 3\)"),
        (lambda sd: untie_lm_head(sd["model"]["llm_backbone"]),
         "lm_head.weight differs from backbone.embedding.weight, but the model ties them"),
    ],
)
def test_bad_keys_fail_with_their_names(published, tiny, tmp_path, corrupt, message):
    vlm, _ = tiny
    checkpoint = release_checkpoint(vlm, with_vision=True)
    corrupt(checkpoint)
    run_dir = tiny_run(vlm, tmp_path / "run", checkpoint)
    with pytest.raises(CheckpointError, match=message):
        load(run_dir, device="cpu")


class Payload:
    """An object whose unpickling would run code."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/cobra_pwned",))


def test_pickle_carrying_code_is_refused(published, tiny, tmp_path):
    vlm, _ = tiny
    checkpoint = release_checkpoint(vlm, with_vision=True)
    checkpoint["model"]["payload"] = Payload()
    run_dir = tiny_run(vlm, tmp_path / "run", checkpoint)
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


def test_model_dir_stored_in_fp16_loads_as_the_fp16_rounded_weights_in_fp32(tmp_path):
    vlm, tokenizer = make_tiny_vlm()
    full = save_model_dir(vlm, tokenizer, tmp_path / "fp32")
    half = save_model_dir(vlm, tokenizer, tmp_path / "fp16", storage_dtype=torch.float16)
    assert (half / "model.safetensors").stat().st_size < 0.6 * (full / "model.safetensors").stat().st_size
    loaded = load(half, device="cpu", dtype="float32").vlm
    for name, value in vlm.state_dict().items():
        stored = loaded.state_dict()[name]
        assert stored.dtype == value.dtype == torch.float32 or not value.is_floating_point(), name
        assert torch.equal(stored, value.half().float() if value.is_floating_point() else value), name


def test_model_dir_from_a_hub_path(hub_cache, tiny, tmp_path, network_calls):
    vlm, tokenizer = tiny
    publish(hub_cache, save_model_dir(vlm, tokenizer, tmp_path / "tiny-cobra"), "someone/tiny-cobra")
    assert same_outputs(load("someone/tiny-cobra", device="cpu", dtype="float32").vlm, vlm)
    assert network_calls == []


def test_load_casts_to_requested_dtype(tmp_path):
    vlm, tokenizer = make_tiny_vlm()
    loaded = load(save_model_dir(vlm, tokenizer, tmp_path / "m"), device="cpu", dtype="bfloat16")
    assert loaded.vlm.llm.lm_head.weight.dtype == torch.bfloat16
    assert loaded.vlm.llm.backbone.layers[0].mixer.A_log.dtype == torch.float32
    assert not any(p.requires_grad for p in loaded.vlm.parameters())


def old_path(vlm: CobraVLM, checkpoint: dict, dtype: torch.dtype) -> CobraVLM:
    """The loader before the meta-device build, as reference: a randomly initialised fp32 model, torch's
    load_state_dict copying the checkpoint in, then the cast to the run dtype."""
    reference = CobraVLM(vlm.config)
    parts = checkpoint["model"]
    reference.vision_backbone.load_state_dict(parts["vision_backbone"])
    reference.projector.load_state_dict(parts["projector"])
    reference.llm.load_state_dict(strip_prefix(parts["llm_backbone"], "llm."))
    return reference.cast(dtype).eval()


@pytest.mark.parametrize("stored", [torch.float32, torch.bfloat16], ids=["fp32-checkpoint", "bf16-checkpoint"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_meta_build_gives_the_old_paths_weights_and_logits(published, tiny, tmp_path, stored, dtype):
    vlm, _ = tiny
    checkpoint = release_checkpoint(vlm.to(stored), with_vision=True)
    run = tiny_run(vlm, tmp_path / "run", checkpoint)
    ours = load(run, device="cpu", dtype=dtype).vlm
    reference = old_path(vlm, checkpoint, getattr(torch, dtype))
    expected = reference.state_dict()
    got = ours.state_dict()
    assert list(got) == list(expected)
    for key, tensor in got.items():
        assert tensor.dtype == expected[key].dtype and torch.equal(tensor, expected[key]), key
    assert same_outputs(ours, reference)
    assert ours.llm.lm_head.weight is ours.llm.backbone.embedding.weight
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())


def test_unknown_sources_are_explained(tmp_path):
    with pytest.raises(ValueError, match="neither a Cobra Chat model directory nor a run directory"):
        load(tmp_path)
    with pytest.raises(ValueError, match="unknown model"):
        load("no-such-model")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(ValueError, match="neither a Cobra Chat model directory nor a run directory"):
        load(tmp_path)


def test_offline_missing_hub_file_fails_fast_and_says_what_was_tried(tmp_path):
    """The real hub path, offline with an empty cache: a clear error within seconds, no download attempted."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_CACHE", None)
    code = "from cobra_app import load\nload('cobra+3b')"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "ModelUnavailableError" in proc.stderr
    assert "han1997/cobra" in proc.stderr and "cobra+3b/config.json" in proc.stderr
    assert f"looked in the hub cache {tmp_path / 'hf' / 'hub'}" in proc.stderr and "--model" in proc.stderr
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


def test_read_model_gives_the_network_and_tokenizer_that_load_wraps(tiny, tmp_path):
    model_dir = save_model_dir(*tiny, tmp_path / "model")
    vlm, tokenizer = read_model(model_dir, device="cpu")
    cobra = load(model_dir, device="cpu")
    assert same_outputs(vlm, cobra.vlm) and tokenizer.get_vocab() == cobra.tokenizer.get_vocab()
    assert cobra.source == str(model_dir) and cobra.config is cobra.vlm.config
