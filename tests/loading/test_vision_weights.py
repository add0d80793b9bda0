"""Frozen vision towers from timm's weights: the same tensors as timm.create_model(pretrained=True) (the path before
the meta-device build), from the hub cache offline, a local safetensors file per tower, or a hub cache given as
--vision-weights; a missing tower says which file, where it looked and which flag supplies it."""

import copy
import dataclasses
import shutil

import pytest
import timm
import torch
from safetensors.torch import save_file

from cobra_app import load
from cobra_app.bench.release_run import cache_file, timm_repo, timm_weights, write_run_dir
from cobra_app.loading import CheckpointError, ModelUnavailableError, build_random
from cobra_app.loading.vision_weights import load_timm_tower, local_weights_file
from cobra_app.model.cobra import CobraConfig
from cobra_app.model.mamba import MambaConfig
from cobra_app.model.vision import DINOV2_L_384, VISION_BACKBONES, VisionBackboneConfig, create_vit
from tests.helpers import TINY_LLM_BACKBONE, make_test_tokenizer, sample_image

# DINOv2-S with registers at 28 px (2x2 patches): the family of cobra+3b's DINOv2 tower, with timm weights 14x smaller
TOWER = dataclasses.replace(DINOV2_L_384, timm_model_name="vit_small_patch14_reg4_dinov2.lvd142m", img_size=28,
                            embed_dim=384, depth=12, num_heads=6)
BACKBONE = VisionBackboneConfig("test-dinov2-small-28px", (TOWER,))


@pytest.fixture(scope="module")
def tower_file(tmp_path_factory):
    """Random timm-format weights for TOWER at the size timm publishes them (518 px position embeddings)."""
    path = tmp_path_factory.mktemp("timm") / "model.safetensors"
    save_file(timm_weights(TOWER, seed=5), path)
    return path


@pytest.fixture(scope="module")
def timm_pretrained(tower_file):
    """What the loader did before: timm builds the tower (random init) and loads its pretrained weights (here from the
    file itself rather than its copy in a hub cache)."""
    return timm.create_model(TOWER.timm_model_name, pretrained=True, num_classes=0, img_size=TOWER.img_size,
                             pretrained_cfg_overlay={"file": str(tower_file)})


def put_in_cache(cache, tower_file) -> None:
    shutil.copyfile(tower_file, cache_file(cache, timm_repo(TOWER), "model.safetensors"))


def empty_tower():
    with torch.device("meta"):
        return create_vit(TOWER)


def assert_same_tensors(ours, reference) -> None:
    expected = reference.state_dict()
    assert list(ours.state_dict()) == list(expected)
    for key, tensor in ours.state_dict().items():
        assert tensor.dtype == expected[key].dtype and torch.equal(tensor, expected[key]), key


def test_tower_from_the_hub_cache_equals_timm_pretrained_without_network(hub_cache, tower_file, timm_pretrained,
                                                                            network_calls):
    put_in_cache(hub_cache, tower_file)
    ours = empty_tower()
    load_timm_tower(ours, TOWER)
    assert_same_tensors(ours, timm_pretrained)
    assert ours.pos_embed.shape == (1, 4, 384)  # resampled from timm's 37x37 grid to the tower's 2x2
    assert network_calls == []


def test_tower_in_the_run_dtype_equals_timm_pretrained_cast(hub_cache, tower_file, timm_pretrained):
    put_in_cache(hub_cache, tower_file)
    ours = empty_tower().to(torch.bfloat16)
    load_timm_tower(ours, TOWER)
    assert_same_tensors(ours, copy.deepcopy(timm_pretrained).to(torch.bfloat16))


def test_vision_dir_with_one_safetensors_file_per_tower(hub_cache, tower_file, timm_pretrained, tmp_path,
                                                        network_calls):
    vision = tmp_path / "vision"
    vision.mkdir()
    shutil.copyfile(tower_file, local_weights_file(vision, TOWER))
    assert local_weights_file(vision, TOWER).name == "vit_small_patch14_reg4_dinov2.lvd142m.safetensors"
    ours = empty_tower()
    load_timm_tower(ours, TOWER, vision)
    assert_same_tensors(ours, timm_pretrained)
    assert network_calls == []


def test_vision_dir_as_a_hub_cache_is_read_offline(hub_cache, tower_file, timm_pretrained, tmp_path, monkeypatch,
                                                   network_calls):
    other_cache = tmp_path / "copied-cache"
    put_in_cache(other_cache, tower_file)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # a machine thought online
    ours = empty_tower()
    load_timm_tower(ours, TOWER, other_cache)
    assert_same_tensors(ours, timm_pretrained)
    assert network_calls == []


def test_missing_tower_weights_say_which_file_where_and_which_flag(hub_cache, tmp_path):
    with pytest.raises(ModelUnavailableError) as exc:
        load_timm_tower(empty_tower(), TOWER)
    message = str(exc.value)
    assert "vision tower 'dino' (timm vit_small_patch14_reg4_dinov2.lvd142m, hub repo timm/" in message
    assert f"looked in the hub cache {hub_cache}" in message and "--vision-weights" in message
    assert "COBRA_VISION" in message
    with pytest.raises(ModelUnavailableError) as exc:
        load_timm_tower(empty_tower(), TOWER, tmp_path)
    assert str(local_weights_file(tmp_path, TOWER)) in str(exc.value) and f"the hub cache {tmp_path}" in str(exc.value)


def test_weights_that_do_not_fit_are_refused_with_the_keys(tmp_path):
    weights = timm_weights(TOWER)
    del weights["reg_token"]
    save_file(weights, local_weights_file(tmp_path, TOWER))
    with pytest.raises(CheckpointError, match="do not fit it: .*Missing key.*reg_token"):
        load_timm_tower(empty_tower(), TOWER, tmp_path)
    other = dataclasses.replace(TOWER, timm_model_name="vit_small_patch14_dinov2.lvd142m", reg_tokens=0)
    save_file(timm_weights(other), local_weights_file(tmp_path, TOWER))  # no register tokens: another grid of tokens
    with pytest.raises(CheckpointError, match="do not fit it"):
        load_timm_tower(empty_tower(), TOWER, tmp_path)


def test_a_release_run_with_frozen_timm_towers_loads_offline(published, tower_file, timm_pretrained, tmp_path,
                                                             monkeypatch, network_calls):
    """cobra+3b's shape in miniature: projector and LLM in the checkpoint, the tower from timm, the LLM files from the
    hub cache; nothing touches the network. The result equals timm's tower plus the checkpoint's parts."""
    monkeypatch.setitem(VISION_BACKBONES, BACKBONE.backbone_id, BACKBONE)
    config = CobraConfig(model_id="tiny-timm", arch_specifier="no-align+fused-gelu-mlp", vision=BACKBONE,
                         llm=MambaConfig(d_model=32, n_layer=2, vocab_size=len(make_test_tokenizer()), d_state=8),
                         llm_max_length=256)
    vlm = build_random(config, torch.float32, seed=1)
    run = write_run_dir(tmp_path / "run", vlm, TINY_LLM_BACKBONE)
    put_in_cache(published, tower_file)
    cobra = load(run, device="cpu", dtype="float32")
    vlm.vision_backbone.featurizer.load_state_dict(timm_pretrained.state_dict())
    assert_same_tensors(cobra.vlm, vlm)
    probs = cobra.score(sample_image(), "Is there a cat?")
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-6)
    assert network_calls == []
