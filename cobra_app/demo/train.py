"""Train the offline demo Cobra on synthetic scenes: `python -m cobra_app.demo.train --out assets/demo-model`.

The stages, each in its module of `cobra_app.demo.training`: the vision warm-up (`vision_warm_up`), then stage 2, the
release's single-stage recipe in miniature (loss on the assistant tokens only, the tower frozen), which starts on
perfect vision (`oracle`), teaches the projector to produce it, and goes on with real images, with auxiliary look-up
losses (`lookup`); batches share each scene's image state (`batching`, `forward`); `loop` runs it all within a
wall-clock budget, deterministic for a seed. The recipe and its measurements: docs/DEMO_MODEL.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from cobra_app.demo.conversations import QA_KINDS
from cobra_app.demo.training.config import TrainConfig
from cobra_app.demo.training.loop import train
from cobra_app.demo.training.saving import read_schedule
from cobra_app.model.cobra import IMAGE_TOKEN_ORDERS


NOT_REPLAYED = {"monitor_every", "monitor_items", "max_minutes"}  # how often a run prints, and its clock: a replay
# follows the recorded schedule whatever these are


def kind_weights(text: str) -> dict[str, float]:
    """"exist=5,spatial=4" -> {"exist": 5.0, "spatial": 4.0}: the question kinds whose training share changes."""
    weights = {}
    for part in text.split(","):
        kind, _, value = part.partition("=")
        kind = kind.strip()
        if kind not in QA_KINDS:
            raise argparse.ArgumentTypeError(f"unknown question kind {kind!r}; known: {', '.join(QA_KINDS)}")
        try:
            weights[kind] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not KIND=WEIGHT") from None
        if not (math.isfinite(weights[kind]) and weights[kind] >= 0):
            raise argparse.ArgumentTypeError(f"the weight of {kind!r} must be a finite number >= 0")
    return weights


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, TrainConfig]:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m cobra_app.demo.train", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("assets/demo-model"), help="model directory to write")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps (cosine schedule length)")
    p.add_argument("--max-minutes", type=float, default=defaults.max_minutes,
                   help="wall-clock budget; the run stops gracefully and saves when it is reached")
    p.add_argument("--rows-per-batch", type=int, default=defaults.rows_per_batch)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    p.add_argument("--average-last", type=int, default=defaults.average_last,
                   help="save the mean of the weights after each of the last N steps (0 = the last step's weights)")
    p.add_argument("--kind-weights", type=kind_weights, default={}, metavar="KIND=W,...",
                   help="change some question kinds' shares of training, e.g. exist=5,spatial=4 (defaults: "
                        + ",".join(f"{k}={w:g}" for k, w in defaults.kind_weights.items()) + ")")
    p.add_argument("--multi-turn-prob", type=float, default=defaults.multi_turn_prob)
    p.add_argument("--threads", type=int, default=defaults.threads,
                   help="torch threads, and the processes that render the scenes")
    p.add_argument("--monitor-every", type=int, default=defaults.monitor_every, help="0 = no held-out checks")
    p.add_argument("--vision-steps", type=int, default=defaults.vision_steps, help="stage 1 steps (0 = skip)")
    p.add_argument("--oracle-steps", type=int, default=defaults.oracle_steps,
                   help="first steps of stage 2 on perfect vision (0 = none)")
    p.add_argument("--projector-steps", type=int, default=defaults.projector_steps,
                   help="projector steps after the oracle stage")
    p.add_argument("--vision-lr-scale", type=float, default=defaults.vision_lr_scale,
                   help="stage 2 learning rate of the vision tower relative to the rest (0 = frozen, as the release)")
    p.add_argument("--local-weight", type=float, default=defaults.local_weight,
                   help="weight of the warm-up's per-patch object-centre target; > 0 also puts each patch's object "
                        "in the oracle's tokens (0 = neither)")
    p.add_argument("--oracle-places", action=argparse.BooleanOptionalAction, default=defaults.oracle_places,
                   help="whether the oracle's tokens give each object's place from the left and the top (else its "
                        "centre only)")
    p.add_argument("--image-token-order", choices=sorted(IMAGE_TOKEN_ORDERS), default=defaults.image_token_order,
                   help="the order the language model reads the image patches in (the release: rows)")
    p.add_argument("--d-model", type=int, default=None)
    p.add_argument("--n-layer", type=int, default=None)
    p.add_argument("--d-state", type=int, default=None)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--replay-schedule", type=Path, metavar="RUN_DIR",
                   help="follow the stage-2 schedule of the run saved in RUN_DIR (its train_log.jsonl and "
                        "training.json; the same recipe options), the clock ignored: reproduces a run its clock "
                        "stopped, bit for bit")
    args = p.parse_args(argv)
    mix = {**defaults.kind_weights, **args.kind_weights}
    if not sum(mix.values()) > 0:
        p.error("--kind-weights leaves no question kind to ask")
    cfg = dataclasses.replace(
        defaults, seed=args.seed, steps=args.steps, max_minutes=args.max_minutes, rows_per_batch=args.rows_per_batch,
        lr=args.lr, warmup_steps=min(args.warmup_steps, args.steps), average_last=args.average_last,
        kind_weights=mix,
        multi_turn_prob=args.multi_turn_prob, threads=args.threads, monitor_every=args.monitor_every,
        d_model=args.d_model, n_layer=args.n_layer, d_state=args.d_state, vision_steps=args.vision_steps,
        oracle_steps=args.oracle_steps, projector_steps=args.projector_steps, vision_lr_scale=args.vision_lr_scale,
        local_weight=args.local_weight, oracle_places=args.oracle_places, image_token_order=args.image_token_order,
    )
    args.replay = None
    if args.replay_schedule:
        recorded, args.replay = read_schedule(args.replay_schedule)
        ours = json.loads(json.dumps(cfg.to_dict()))  # as saved: tuples become lists
        differ = sorted(k for k in ours.keys() | recorded.keys()
                        if k not in NOT_REPLAYED and ours.get(k) != recorded.get(k))
        if differ:
            p.error(f"--replay-schedule: {args.replay_schedule} was trained with other {', '.join(differ)}; "
                    "give the options it was trained with")
    return args, cfg


def main(argv: Sequence[str] | None = None) -> int:
    args, cfg = parse_args(argv)
    command = "python -m cobra_app.demo.train " + " ".join(sys.argv[1:] if argv is None else argv)
    result = train(cfg, args.out, progress=not args.no_progress, command=command, replay=args.replay)
    size = (args.out / "model.safetensors").stat().st_size
    print(f"saved {args.out} after {result.steps_done} steps in {result.wall_seconds / 60:.1f} min "
          f"(stopped by {result.stopped_by}); weights {size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
