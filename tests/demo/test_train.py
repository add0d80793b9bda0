"""Spec: the training command maps its options onto the recipe's TrainConfig (the stages: tests/demo/training/)."""

import json
from pathlib import Path

import pytest

from cobra_app.demo.conversations import KIND_WEIGHTS
from cobra_app.demo.train import parse_args
from cobra_app.demo.training.config import TrainConfig


def test_options_set_the_config_and_everything_else_keeps_the_recipe():
    args, cfg = parse_args(["--out", "/tmp/m", "--steps", "12", "--warmup-steps", "4", "--vision-steps", "20",
                            "--oracle-steps", "4", "--projector-steps", "3", "--monitor-every", "0", "--threads", "2",
                            "--vision-lr-scale", "0.1", "--local-weight", "10", "--no-oracle-places",
                            "--image-token-order", "columns", "--average-last", "7"])
    assert args.out == Path("/tmp/m")
    assert (cfg.steps, cfg.warmup_steps, cfg.vision_steps, cfg.oracle_steps, cfg.projector_steps) == (12, 4, 20, 4, 3)
    assert (cfg.monitor_every, cfg.threads, cfg.vision_lr_scale, cfg.local_weight) == (0, 2, 0.1, 10.0)
    assert not cfg.oracle_places and parse_args([])[1].oracle_places
    assert (cfg.image_token_order, parse_args([])[1].image_token_order) == ("columns", "rows")
    assert (cfg.average_last, parse_args([])[1].average_last) == (7, 0)
    recipe = TrainConfig()
    assert (cfg.lr, cfg.rows_per_batch, cfg.max_minutes, cfg.seed) == (recipe.lr, recipe.rows_per_batch,
                                                                       recipe.max_minutes, recipe.seed)


def test_kind_weights_change_the_named_kinds_and_keep_the_others():
    _, cfg = parse_args(["--kind-weights", "exist=5, spatial=4"])
    assert cfg.kind_weights == {**KIND_WEIGHTS, "exist": 5.0, "spatial": 4.0}
    assert parse_args([])[1].kind_weights == KIND_WEIGHTS


@pytest.mark.parametrize("option", ["exists=5", "exist=five", "exist=-1", "exist=inf", "exist",
                                    "describe=0,count=0,colour=0,shape=0,exist=0,spatial=0"])
def test_kind_weights_refuse_unknown_kinds_bad_numbers_and_an_empty_mix(option, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--kind-weights", option])
    assert "--kind-weights" in capsys.readouterr().err


def test_the_learning_rate_warm_up_never_outlasts_the_run():
    _, cfg = parse_args(["--steps", "3"])
    assert cfg.warmup_steps == 3


# options added after the shipped run (R10) was trained, at the value that gives the recipe it ran
ADDED_SINCE_THE_SHIPPED_RUN = {"local_weight": 0.0, "oracle_places": True, "image_token_order": "rows",
                               "average_last": 0,
                               "kind_weights": {"describe": 2, "count": 2, "colour": 2, "shape": 2, "exist": 3,
                                                "spatial": 6}}


def test_the_defaults_are_the_recipe_of_the_shipped_model():
    shipped = json.loads((Path(__file__).resolve().parents[2] / "assets/demo-model/training.json").read_text())
    recipe = {**ADDED_SINCE_THE_SHIPPED_RUN, **shipped["train_config"]}
    defaults = json.loads(json.dumps(TrainConfig().to_dict()))  # as saved: tuples become lists
    printing = {"monitor_every", "monitor_items"}  # how often the run prints, not what it learns
    assert {k: v for k, v in defaults.items() if k not in printing} == {
        k: v for k, v in recipe.items() if k not in printing}
