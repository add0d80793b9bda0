"""Optimisation: AdamW's parameter groups, the learning-rate schedule, and the wall-clock budget it keeps to."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cobra_app.demo.training.config import TrainConfig
from cobra_app.model.cobra import CobraVLM

NO_DECAY_SUFFIXES = ("A_log", "D", "bias", "norm.weight", "norm_f.weight", "pos_embed", "cls_token", "reg_token",
                     "conv1d.weight", "gamma")
SAVE_RESERVE_SECONDS = 20.0  # kept at the end of the budget for saving


def param_groups(vlm: CobraVLM, weight_decay: float, vision_lr_scale: float = 1.0) -> list[dict]:
    """AdamW groups: weight decay on matrices only (not on norms, biases, SSM parameters, embeddings of position);
    the vision tower's learning rate scaled by `vision_lr_scale` (group key "lr_scale")."""
    groups: dict[tuple[bool, bool], list] = {(v, d): [] for v in (False, True) for d in (True, False)}
    for name, p in vlm.named_parameters():
        if p.requires_grad:
            decay = p.ndim >= 2 and not name.endswith(NO_DECAY_SUFFIXES)
            groups[(name.startswith("vision_backbone."), decay)].append(p)
    return [{"params": params, "weight_decay": weight_decay if decay else 0.0,
             "lr_scale": vision_lr_scale if vision else 1.0}
            for (vision, decay), params in groups.items() if params]


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over `warmup_steps`, then cosine from `lr` to `lr * min_lr_ratio` as `progress` goes 0 -> 1."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    cos = 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos)


@dataclass
class Budget:
    """A run's wall-clock budget: `seconds` from its start, read on `clock` (seconds, `time.monotonic` unless a test
    injects another), the last SAVE_RESERVE_SECONDS of them kept for saving."""

    seconds: float
    clock: Callable[[], float] = time.monotonic
    start: float = field(init=False)

    def __post_init__(self) -> None:
        self.start = self.clock()

    def elapsed(self) -> float:
        """Seconds since the start."""
        return self.clock() - self.start

    @property
    def usable(self) -> float:
        """Seconds from the start to the deadline, after which no stage starts another step."""
        return self.seconds - SAVE_RESERVE_SECONDS

    def spent(self) -> bool:
        """Whether the deadline has passed."""
        return self.elapsed() > self.usable


class BudgetedCosine:
    """Stage 2's learning rate, step by step: `lr_at` with the cosine's progress by step, and by time only once the
    remaining steps, at the pace so far, would overrun the budget (the schedule is then compressed to end on time).
    A run that keeps to its budget never lets the clock into its schedule, so its weights depend on the seed alone."""

    stop_reason = "time"  # what ends a run whose `lr` returns None

    def __init__(self, cfg: TrainConfig, budget: Budget) -> None:
        self.cfg, self.budget = cfg, budget
        self.loop_offset = budget.elapsed()  # seconds of the budget spent before stage 2
        self.step_seconds = 0.0  # time spent in optimizer steps so far (monitoring included, the projector warm-up not)
        self.behind = False  # projected to overrun the budget: the cosine then follows the clock
        self.time_progress = 0.0  # share of stage 2's time spent, as of the last `lr` call

    def lr(self, step: int) -> float | None:
        """The learning rate of `step` (0-based), or None when the budget is spent."""
        cfg, budget = self.cfg, self.budget
        elapsed = budget.elapsed()
        if elapsed > budget.usable:
            return None
        if not self.behind and step > cfg.warmup_steps:
            self.behind = elapsed + self.step_seconds / step * (cfg.steps - step) > budget.usable
        step_progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
        self.time_progress = (elapsed - self.loop_offset) / max(budget.usable - self.loop_offset, 1)
        return lr_at(cfg, step, max(step_progress, self.time_progress) if self.behind else step_progress)

    def averages(self, step: int) -> bool:
        """Whether the weights after `step` (0-based, its `lr` read) join the saved average: the schedule's last
        `average_last` steps, or, once the clock compresses it, its last average_last/steps share of the time
        (a run stopped by time would otherwise stop before its averaging starts)."""
        cfg = self.cfg
        if cfg.average_last == 0 or step < cfg.oracle_steps:
            return False
        late_in_time = self.time_progress >= 1 - cfg.average_last / max(cfg.steps - cfg.warmup_steps, 1)
        return step >= cfg.steps - cfg.average_last or (self.behind and late_in_time)


@dataclass(frozen=True)
class ScheduleReplay:
    """What a run's clock decided, as its files keep it: the learning rate of each stage-2 step it took (its
    train_log.jsonl) and how many of its last steps it averaged (training.json)."""

    lrs: list[float]
    averaged_steps: int


class ReplayedSchedule(BudgetedCosine):
    """An earlier run's stage-2 schedule step by step, the clock ignored: a run that its clock stopped (so that its
    weights depend on the host's pace) is reproduced bit for bit whatever the pace of the host that replays it."""

    stop_reason = "replay"

    def __init__(self, cfg: TrainConfig, budget: Budget, replay: ScheduleReplay) -> None:
        super().__init__(cfg, budget)
        self.replay = replay

    def lr(self, step: int) -> float | None:
        return self.replay.lrs[step] if step < len(self.replay.lrs) else None

    def averages(self, step: int) -> bool:
        return step >= len(self.replay.lrs) - self.replay.averaged_steps
