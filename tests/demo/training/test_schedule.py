"""Spec: the learning rate warms up linearly, then follows the cosine; the cosine's progress is by step while the run
keeps to its wall-clock budget, by time once it is projected to overrun it, and the budget stops the run at its
deadline (read on an injected clock); the weights averaged are those of the schedule's last steps, by the same
progress; a replayed schedule is an earlier run's, step by step, whatever the clock."""

import pytest

from cobra_app.demo.training.config import TrainConfig
from cobra_app.demo.training.schedule import (
    SAVE_RESERVE_SECONDS,
    Budget,
    BudgetedCosine,
    ReplayedSchedule,
    ScheduleReplay,
    lr_at,
)


class Clock:
    """A clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(cfg, 0, 0.0) == pytest.approx(1e-4)
    assert lr_at(cfg, 10, 0.0) == pytest.approx(1e-3)
    assert lr_at(cfg, 50, 0.5) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert lr_at(cfg, 99, 1.0) == pytest.approx(1e-4)


def test_the_budget_is_spent_at_its_deadline_before_the_reserve_for_saving():
    clock = Clock()
    budget = Budget(60.0, clock)
    clock.now += 60.0 - SAVE_RESERVE_SECONDS
    assert budget.elapsed() == 60.0 - SAVE_RESERVE_SECONDS and not budget.spent()
    clock.now += 0.5
    assert budget.spent()


def test_a_run_on_pace_follows_the_steps_and_one_projected_to_overrun_follows_the_clock():
    cfg = TrainConfig(lr=1e-3, warmup_steps=2, min_lr_ratio=0.1, steps=12)
    clock = Clock()
    on_pace = BudgetedCosine(cfg, Budget(1000.0, clock))
    for step in range(12):
        assert on_pace.lr(step) == pytest.approx(lr_at(cfg, step, (step - 2) / 10))
        clock.now += 1.0
        on_pace.step_seconds += 1.0
    clock = Clock()
    budget = Budget(SAVE_RESERVE_SECONDS + 40.0, clock)  # 40 usable seconds for 12 steps of 10 s
    behind = BudgetedCosine(cfg, budget)
    lrs = []
    for step in range(12):
        lrs.append(behind.lr(step))
        clock.now += 10.0
        behind.step_seconds += 10.0
    assert behind.behind
    assert lrs[3] == pytest.approx(lr_at(cfg, 3, 30.0 / 40.0))  # by time: 30 of 40 s, not 1 of 10 steps
    assert lrs[4] is not None and lrs[5] is None  # 50 s elapsed: spent


def averaged_steps(cfg: TrainConfig, usable_seconds: float, seconds_per_step: float) -> list[int]:
    """The steps (0-based) whose weights join the average in a run of `cfg` at a steady pace, until the budget
    stops it."""
    clock = Clock()
    schedule = BudgetedCosine(cfg, Budget(SAVE_RESERVE_SECONDS + usable_seconds, clock))
    averaged = []
    for step in range(cfg.steps):
        if schedule.lr(step) is None:
            break
        averaged += [step] if schedule.averages(step) else []
        clock.now += seconds_per_step
        schedule.step_seconds += seconds_per_step
    return averaged


def test_the_averaged_steps_are_the_schedules_last_by_step_on_pace_and_its_last_share_of_time_once_behind():
    cfg = TrainConfig(warmup_steps=2, steps=12, average_last=3, oracle_steps=0)
    assert averaged_steps(cfg, 1000.0, 1.0) == [9, 10, 11]
    # 80 usable seconds for 12 steps of 10 s: steps 0-8 run; the last 3 of 10 scheduled steps = the last 30% of the
    # time, from 56 s on: the steps read at 60, 70 and 80 s
    assert averaged_steps(cfg, 80.0, 10.0) == [6, 7, 8]
    assert averaged_steps(TrainConfig(warmup_steps=2, steps=12, average_last=0, oracle_steps=0), 80.0, 10.0) == []
    assert averaged_steps(TrainConfig(warmup_steps=2, steps=12, average_last=3, oracle_steps=7), 80.0, 10.0) == [7, 8]


def test_a_replayed_schedule_gives_the_recorded_rates_averages_the_recorded_tail_and_ends_where_the_run_did():
    clock = Clock()
    replay = ScheduleReplay([1e-3, 2e-3, 1.5e-3, 7e-4, 1e-4], averaged_steps=2)
    schedule = ReplayedSchedule(TrainConfig(warmup_steps=1, steps=12, average_last=3, oracle_steps=0),
                                Budget(1.0, clock), replay)
    clock.now += 1000.0  # far past the budget: the replay ignores the clock
    assert [schedule.lr(step) for step in range(6)] == [*replay.lrs, None]
    assert [step for step in range(5) if schedule.averages(step)] == [3, 4]
    assert schedule.stop_reason == "replay"
    none_averaged = ReplayedSchedule(TrainConfig(), Budget(1.0, clock), ScheduleReplay([1e-3, 1e-3], 0))
    assert not any(none_averaged.averages(step) for step in range(2))
