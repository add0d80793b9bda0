"""Spec: the learning rate warms up linearly, then follows the cosine."""

import pytest

from cobra_app.demo.training.config import TrainConfig
from cobra_app.demo.training.schedule import lr_at


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(cfg, 0, 0.0) == pytest.approx(1e-4)
    assert lr_at(cfg, 10, 0.0) == pytest.approx(1e-3)
    assert lr_at(cfg, 50, 0.5) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert lr_at(cfg, 99, 1.0) == pytest.approx(1e-4)
