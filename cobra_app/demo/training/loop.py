"""The whole run: the vision warm-up, then stage 2 (the oracle stage, the projector warm-up, then real images), within a
wall-clock budget, deterministic for a seed."""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from cobra_app.demo.model_config import demo_config
from cobra_app.demo.tokenizer import build_demo_tokenizer
from cobra_app.demo.training.batching import Batch, BatchStream
from cobra_app.demo.training.config import TrainConfig
from cobra_app.demo.training.forward import batch_loss
from cobra_app.demo.training.lookup import LookupHeads
from cobra_app.demo.training.model_init import build_model
from cobra_app.demo.training.monitor import monitor_accuracy, monitor_items
from cobra_app.demo.training.oracle import OracleTokens, warm_up_projector
from cobra_app.demo.training.rendering import RenderScenes, SceneRenderer
from cobra_app.demo.training.saving import StepLog, TrainResult, save
from cobra_app.demo.training.schedule import (
    Budget,
    BudgetedCosine,
    ReplayedSchedule,
    ScheduleReplay,
    param_groups,
)
from cobra_app.demo.training.vision_warm_up import warm_up_vision
from cobra_app.model.cobra import CobraConfig, CobraVLM
from cobra_app.model.ops import get_ops
from cobra_app.prompting import TurnTokenizer, get_prompt_builder


@contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """Inside, torch uses deterministic algorithms only; the previous setting is restored after. Needed for training
    to be a function of the seed: on CPU the backward of `index_put_` with accumulate (the rows that share a scene's
    state) otherwise adds in thread-timing order (docs/DEMO_MODEL.md, 'Reproducing it')."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


def stage_two_parts(vlm: CobraVLM, config: CobraConfig, cfg: TrainConfig
                    ) -> tuple[LookupHeads | None, OracleTokens | None, torch.optim.Optimizer]:
    """Stage 2's look-up heads, oracle tokens (None when not used) and optimizer; freezes the tower unless
    `cfg.vision_lr_scale` > 0."""
    if cfg.vision_lr_scale == 0:
        vlm.vision_backbone.requires_grad_(False)
    heads = (LookupHeads(config.llm.d_model, cfg.lookup_layer, cfg.offset_layer, cfg.verdict_layer,
                         cfg.lookup_loss_weight)
             if cfg.lookup_loss_weight else None)
    if heads and max(heads.layers) >= config.llm.n_layer:
        raise ValueError(f"the look-up heads read blocks {heads.layers}; the model has {config.llm.n_layer}")
    vision = config.vision
    oracle = (OracleTokens(vision.image_size, vision.patch_grid, config.llm.d_model, local=cfg.local_weight > 0,
                           places=cfg.oracle_places)
              if cfg.oracle_steps else None)
    groups = param_groups(vlm, cfg.weight_decay, cfg.vision_lr_scale)
    for extra in (heads, oracle):
        if extra:
            groups.append({"params": list(extra.parameters()), "weight_decay": 0.0, "lr_scale": 1.0})
    return heads, oracle, torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def optimizer_step(vlm: CobraVLM, batch: Batch, heads: LookupHeads | None, oracle: OracleTokens | None,
                   optimizer: torch.optim.Optimizer, grad_clip: float) -> tuple[float, float]:
    """One step on `batch` (read through `oracle`'s tokens when given) -> (loss, gradient norm before clipping)."""
    loss = batch_loss(vlm, batch, heads, oracle(batch.scenes) if oracle else None)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    optimizer.step()
    return loss.item(), grad_norm


def check_schedule(cfg: TrainConfig, replay: ScheduleReplay | None = None) -> None:
    """Refuse a stage-2 schedule that cannot run, before any training (the vision warm-up alone takes minutes)."""
    if cfg.oracle_steps >= cfg.steps:
        raise ValueError(f"oracle_steps ({cfg.oracle_steps}) must leave steps for real images (steps {cfg.steps})")
    if cfg.average_last > cfg.steps - cfg.oracle_steps:
        raise ValueError(f"average_last ({cfg.average_last}) must average steps on real images only "
                         f"(steps {cfg.steps}, oracle_steps {cfg.oracle_steps}; --average-last sets it)")
    if replay is not None and len(replay.lrs) > cfg.steps:
        raise ValueError(f"the replayed schedule has {len(replay.lrs)} steps; this recipe's has {cfg.steps}")


@deterministic_algorithms()
def train(
    cfg: TrainConfig,
    out_dir: Path | None = None,
    config: CobraConfig | None = None,
    tokenizer=None,
    progress: bool = True,
    command: str = "",
    clock: Callable[[], float] | None = None,
    replay: ScheduleReplay | None = None,
) -> TrainResult:
    """Train; with `out_dir`, save the model directory, the loss log and the run info (`command`: how it was run)
    there. `clock` (seconds; default `time.monotonic`) is what the wall-clock budget is read on. With `replay`, stage 2
    follows an earlier run's schedule (`read_schedule`) instead, and no budget applies."""
    check_schedule(cfg, replay)
    get_ops(torch.device("cpu"))  # the kernels load (or compile) before the clock starts: not charged to the pace
    budget = Budget(math.inf if replay else cfg.max_minutes * 60, clock or time.monotonic)
    torch.set_num_threads(cfg.threads)
    tokenizer = tokenizer or build_demo_tokenizer(kind_weights=cfg.kind_weights)
    overrides = {k: v for k in ("d_model", "n_layer", "d_state") if (v := getattr(cfg, k)) is not None}
    config = dataclasses.replace(config or demo_config(len(tokenizer), **overrides),
                                 image_token_order=cfg.image_token_order)  # the recipe's reading order
    tokens = TurnTokenizer(tokenizer, get_prompt_builder(config.prompt_format))
    vlm = build_model(config, cfg.seed).train()
    with SceneRenderer(vlm.image_transform, workers=cfg.threads) as render_scenes:
        return _run_stages(vlm, cfg, tokens, tokenizer, render_scenes, budget, replay, out_dir, progress, command)


def _run_stages(vlm: CobraVLM, cfg: TrainConfig, tokens: TurnTokenizer, tokenizer, render_scenes: RenderScenes,
                budget: Budget, replay: ScheduleReplay | None, out_dir: Path | None, progress: bool, command: str
                ) -> TrainResult:
    """`train`'s stages in order on a built model: the vision warm-up, then stage 2 (the oracle stage, the projector
    warm-up, real images); saves to `out_dir` when given."""
    vision_log = warm_up_vision(vlm, cfg, render_scenes, progress, budget) if cfg.vision_steps else []
    stream = BatchStream(cfg.seed, tokens, render_scenes, cfg)
    held_out = monitor_items(cfg.monitor_items) if cfg.monitor_every else []
    heads, oracle, optimizer = stage_two_parts(vlm, vlm.config, cfg)
    stopped_by, ema, averaged = "steps", None, None
    schedule = ReplayedSchedule(cfg, budget, replay) if replay else BudgetedCosine(cfg, budget)
    with StepLog(out_dir) as log, tqdm(total=cfg.steps, disable=not progress, dynamic_ncols=True, desc="train") as bar:
        for step in range(cfg.steps):
            lr = schedule.lr(step)
            if lr is None:
                stopped_by = schedule.stop_reason
                break
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            if oracle and step == cfg.oracle_steps:  # the oracle stage ends: real images from here on
                vision_log += warm_up_projector(vlm, oracle, cfg, render_scenes, progress, budget)
            step_start = budget.clock()
            batch = next(stream)
            on_oracle = oracle if step < cfg.oracle_steps else None
            value, grad_norm = optimizer_step(vlm, batch, heads, on_oracle, optimizer, cfg.grad_clip)
            if schedule.averages(step):  # stochastic weight averaging over the schedule's last steps
                averaged = averaged if averaged is not None else AveragedModel(vlm, use_buffers=False)
                averaged.update_parameters(vlm)
            ema = value if ema is None else 0.95 * ema + 0.05 * value
            entry = {"step": step + 1, "loss": round(value, 5), "lr": lr, "grad_norm": round(grad_norm, 4),
                     "rows": len(batch.lengths), "scenes": int(batch.row_scene.max()) + 1,
                     "tokens": batch.num_label_tokens, "elapsed_s": round(budget.elapsed(), 2)}
            if cfg.monitor_every and ((step + 1) % cfg.monitor_every == 0 or step + 1 == cfg.steps):
                entry["monitor"] = monitor_accuracy(vlm, held_out, tokens, on_oracle)
                tqdm.write(f"step {step + 1}: loss(ema) {ema:.4f} held-out teacher-forced accuracy "
                           + " ".join(f"{k} {v:.2f}" for k, v in entry["monitor"].items()), file=sys.stderr)
            log.append(entry)
            schedule.step_seconds += budget.clock() - step_start
            bar.update(1)
            bar.set_postfix(loss=f"{ema:.4f}", lr=f"{lr:.2e}")
    if averaged is not None:
        with torch.no_grad():
            for weight, mean in zip(vlm.parameters(), averaged.module.parameters(), strict=True):
                weight.copy_(mean)
    vlm.eval()
    result = TrainResult(vlm, len(log.entries), budget.elapsed(), stopped_by, log.entries, vision_log,
                         averaged_steps=0 if averaged is None else int(averaged.n_averaged))
    if out_dir is not None:
        save(result, cfg, tokenizer, Path(out_dir), budget.elapsed() - schedule.loop_offset, command)
    return result
