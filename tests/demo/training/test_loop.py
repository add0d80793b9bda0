"""Spec: a run trains the stages in order, keeps the tower frozen in stage 2, is a function of its seed (bit for bit),
keeps to its wall-clock budget, replays the schedule of a run its clock stopped, and saves a loadable model, its
weights rounded to the storage dtype (a few steps of a tiny model; CI never runs the full training)."""

import dataclasses
import json
import time

import numpy as np
import pytest
import torch

from cobra_app.demo.model_config import tiny_config
from cobra_app.demo.training import loop
from cobra_app.demo.training.config import TrainConfig
from cobra_app.demo.training.loop import train
from cobra_app.demo.training.model_init import build_model
from cobra_app.demo.training.saving import INFO_FILE, LOG_FILE, STORAGE_DTYPE, read_schedule
from cobra_app.demo.training.schedule import ScheduleReplay

TINY_HEADS = {"lookup_layer": 0, "offset_layer": 1, "verdict_layer": 1}  # the tiny model has two blocks
UNAVERAGED = {"average_last": 0}  # the recipe averages more steps than these runs have


def test_stage_two_keeps_the_warmed_up_tower_frozen_by_default(tokenizer):
    cfg = TrainConfig(**UNAVERAGED, **TINY_HEADS, steps=3, rows_per_batch=6, warmup_steps=1, monitor_every=0,
                      vision_steps=0, oracle_steps=0)
    assert cfg.vision_lr_scale == 0
    torch.manual_seed(0)
    before = {k: v.clone() for k, v in build_model(tiny_config(len(tokenizer)), seed=cfg.seed).state_dict().items()}
    result = train(cfg, None, config=tiny_config(len(tokenizer)), tokenizer=tokenizer, progress=False)
    changed = {k for k, v in result.vlm.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and not any(k.startswith("vision_backbone.") for k in changed)
    assert any(k.startswith("projector.") for k in changed) and any(k.startswith("llm.") for k in changed)


@pytest.mark.parametrize("local_weight", [0.0, 10.0])
def test_the_same_seed_trains_the_same_weights_through_every_stage(tokenizer, local_weight):
    """Vision warm-up, oracle stage, projector warm-up and stage 2 (with and without the local target), twice from
    seed 3, on two threads: equal weights, bit for bit; another seed gives other weights. The budget is read on a
    stopped clock, so however loaded the machine, the clock never enters the schedule (a run that keeps to its
    budget)."""
    cfg = TrainConfig(**UNAVERAGED, **TINY_HEADS, seed=3, steps=6, rows_per_batch=6, warmup_steps=2, monitor_every=0,
                      vision_steps=2, vision_images=4, oracle_steps=2, projector_steps=2, threads=2,
                      local_weight=local_weight)

    def weights(cfg):
        result = train(cfg, None, config=tiny_config(len(tokenizer)), tokenizer=tokenizer, progress=False,
                       clock=lambda: 0.0)
        assert result.steps_done == cfg.steps
        return result.vlm.state_dict()

    first, second = weights(cfg), weights(cfg)
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = weights(dataclasses.replace(cfg, seed=4))
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_at_the_demo_models_size_two_runs_of_one_seed_are_equal_bit_for_bit(tokenizer):
    """At the shipped model's sizes (48 rows a step: the backward of the rows that share a scene's state is large
    enough to be split over threads), every stage twice from one seed on two threads: equal weights, bit for bit.
    Training switches torch to deterministic algorithms for its duration only."""
    cfg = TrainConfig(**UNAVERAGED, seed=5, steps=4, warmup_steps=1, monitor_every=0, vision_steps=1, vision_images=4,
                        oracle_steps=2, projector_steps=1, threads=2)
    first, second = (train(cfg, None, tokenizer=tokenizer, progress=False).vlm.state_dict() for _ in range(2))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.are_deterministic_algorithms_enabled()


def test_the_kernels_are_loaded_before_the_training_clock_starts(tokenizer, monkeypatch):
    """Loading (or compiling) the CPU kernels is not charged to the budget nor to the pace of the first step."""
    events = []
    monkeypatch.setattr(loop, "get_ops", lambda device: events.append("kernels"))
    cfg = TrainConfig(**UNAVERAGED, **TINY_HEADS, steps=2, rows_per_batch=4, warmup_steps=1, monitor_every=0,
                      vision_steps=0, oracle_steps=0)
    train(cfg, None, config=tiny_config(len(tokenizer)), tokenizer=tokenizer, progress=False,
          clock=lambda: events.append("clock") or time.monotonic())
    assert events[0] == "kernels" and "clock" in events


def test_the_tokenizer_is_learned_from_the_runs_own_question_mix(tokenizer, monkeypatch):
    """A run given no tokenizer learns one from a corpus mixed as its questions are (another mix, other merges)."""
    built = []
    monkeypatch.setattr(loop, "build_demo_tokenizer", lambda **kwargs: built.append(kwargs) or tokenizer)
    cfg = TrainConfig(**UNAVERAGED, **TINY_HEADS, steps=1, rows_per_batch=4, warmup_steps=1, monitor_every=0,
                      vision_steps=0, oracle_steps=0, kind_weights={"exist": 1.0, "spatial": 1.0})
    train(cfg, None, config=tiny_config(len(tokenizer)), progress=False)
    assert built == [{"kind_weights": {"exist": 1.0, "spatial": 1.0}}]


@pytest.mark.parametrize("order", ["rows", "columns"])
def test_a_few_steps_reduce_the_loss_and_save_a_loadable_model(tokenizer, tmp_path, order):
    """...in the reading order of the recipe (`image_token_order`), which the saved model keeps."""
    from cobra_app import load

    cfg = TrainConfig(**UNAVERAGED, **TINY_HEADS, steps=60, rows_per_batch=12, lr=3e-3, warmup_steps=5,
                      monitor_every=0, vision_steps=5, oracle_steps=10, projector_steps=5, vision_images=8,
                      image_token_order=order)
    out = tmp_path / "tiny-model"
    result = train(cfg, out, config=tiny_config(len(tokenizer)), tokenizer=tokenizer, progress=False)
    losses = [e["loss"] for e in result.log]
    assert result.steps_done == 60 and result.stopped_by == "steps"
    assert np.mean(losses[-5:]) < 0.7 * losses[0]
    log = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, 61))
    info = json.loads((out / INFO_FILE).read_text())
    assert info["steps_done"] == 60 and info["weights_bytes"] > 0
    loaded = load(out, device="cpu")
    assert loaded.config == result.vlm.config and loaded.config.image_token_order == order
    for (name, a), b in zip(result.vlm.state_dict().items(), loaded.vlm.state_dict().values()):
        stored = a.to(STORAGE_DTYPE).to(a.dtype) if a.is_floating_point() else a  # rounded once, read back exactly
        assert torch.equal(stored, b), name


@pytest.mark.parametrize("average_last", [0, 3])
def test_the_model_holds_the_mean_of_the_weights_after_each_of_the_last_averaged_steps(tokenizer, monkeypatch,
                                                                                         average_last):
    """Stochastic weight averaging: with `average_last` k the trained model holds the mean of its weights after each
    of the last k steps, the run info says k; with 0, the last step's weights as they are."""
    after_each_step = []
    optimizer_step = loop.optimizer_step

    def recording(vlm, *args):
        out = optimizer_step(vlm, *args)
        after_each_step.append({name: w.detach().clone() for name, w in vlm.named_parameters()})
        return out

    monkeypatch.setattr(loop, "optimizer_step", recording)
    cfg = TrainConfig(**TINY_HEADS, steps=5, rows_per_batch=6, warmup_steps=1, monitor_every=0, vision_steps=0,
                      oracle_steps=0, average_last=average_last)
    result = train(cfg, None, config=tiny_config(len(tokenizer)), tokenizer=tokenizer, progress=False,
                   clock=lambda: 0.0)
    assert len(after_each_step) == 5 and result.averaged_steps == average_last
    last = after_each_step[-1]
    for name, weight in result.vlm.named_parameters():
        if average_last == 0:
            assert torch.equal(weight, last[name]), name
        else:  # a running mean against the mean of the stack: float32 rounding apart
            mean = torch.stack([weights[name] for weights in after_each_step[-average_last:]]).mean(0)
            torch.testing.assert_close(weight, mean, rtol=1e-6, atol=1e-7)
    moved = [name for name, weight in result.vlm.named_parameters() if not torch.equal(weight, last[name])]
    assert bool(moved) == (average_last > 0)


def test_averaging_reaches_back_no_further_than_the_oracle_stage_refused_before_any_training(tokenizer, monkeypatch):
    warmed_up = []
    monkeypatch.setattr(loop, "warm_up_vision", lambda *args: warmed_up.append(args) or [])
    cfg = TrainConfig(**TINY_HEADS, steps=5, rows_per_batch=6, warmup_steps=1, monitor_every=0, vision_steps=3,
                      oracle_steps=2, projector_steps=1, average_last=4)
    with pytest.raises(ValueError, match="average_last"):
        train(cfg, None, config=tiny_config(len(tokenizer)), tokenizer=tokenizer, progress=False)
    assert warmed_up == []


def test_time_budget_stops_gracefully_and_saves(tokenizer, tmp_path):
    cfg = TrainConfig(**TINY_HEADS, steps=10_000, rows_per_batch=4, max_minutes=0.0, monitor_every=0)
    result = train(cfg, tmp_path / "m", config=tiny_config(len(tokenizer)), tokenizer=tokenizer, progress=False)
    assert result.stopped_by == "time" and result.steps_done == 0 and result.vision_log == []
    assert (tmp_path / "m" / "model.safetensors").is_file()


def test_a_run_its_clock_stopped_is_replayed_bit_for_bit_from_its_saved_schedule(tokenizer, tmp_path):
    """A run whose clock runs fast (two seconds a reading) is projected to overrun, so its cosine follows the clock,
    it averages its last share of the time and stops by time; replayed from its files on a stopped clock (as on
    another host's pace): the same steps, the same averaged tail, equal weights bit for bit."""
    cfg = TrainConfig(**TINY_HEADS, steps=40, rows_per_batch=6, warmup_steps=2, monitor_every=0, vision_steps=0,
                      oracle_steps=0, average_last=20, max_minutes=1.0)
    readings = iter(range(0, 10**6, 2))
    fast = train(cfg, tmp_path / "run", config=tiny_config(len(tokenizer)), tokenizer=tokenizer, progress=False,
                 clock=lambda: float(next(readings)))
    assert fast.stopped_by == "time" and 2 < fast.steps_done < cfg.steps and 0 < fast.averaged_steps < fast.steps_done
    recorded, replay = read_schedule(tmp_path / "run")
    assert recorded["steps"] == cfg.steps and len(replay.lrs) == fast.steps_done
    again = train(cfg, None, config=tiny_config(len(tokenizer)), tokenizer=tokenizer, progress=False,
                  clock=lambda: 0.0, replay=replay)
    assert again.stopped_by == "replay"
    assert (again.steps_done, again.averaged_steps) == (fast.steps_done, fast.averaged_steps)
    first, second = fast.vlm.state_dict(), again.vlm.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_a_replay_longer_than_the_recipes_schedule_is_refused_before_any_training(tokenizer):
    cfg = TrainConfig(**TINY_HEADS, steps=3, rows_per_batch=6, warmup_steps=1, monitor_every=0, vision_steps=0,
                      oracle_steps=0, average_last=0)
    with pytest.raises(ValueError, match="replayed schedule has 4 steps"):
        train(cfg, None, config=tiny_config(len(tokenizer)), tokenizer=tokenizer, progress=False,
              replay=ScheduleReplay([1e-3] * 4, 0))
