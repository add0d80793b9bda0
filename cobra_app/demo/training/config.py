"""The demo model's training hyper-parameters."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from cobra_app.demo.conversations import KIND_WEIGHTS


@dataclass
class TrainConfig:
    """Training hyper-parameters (defaults: the shipped model's recipe)."""

    seed: int = 0
    steps: int = 5600  # optimizer steps of the cosine schedule (stage 2, the oracle stage included)
    max_minutes: float = 60.0  # hard wall-clock budget (model building and saving included)
    rows_per_batch: int = 48  # question rows per step (scenes are added whole until this is reached)
    kind_weights: dict[str, float] = field(default_factory=lambda: dict(KIND_WEIGHTS))  # the question kinds' shares
    # in training conversations (and in the tokenizer's corpus, drawn from the same stream)
    multi_turn_prob: float = 0.3  # share of multi-turn conversations kept whole (the rest: one row per question)
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    average_last: int = 1400  # stage 2's last steps whose weights are averaged into the saved model (stochastic weight
    # averaging, torch.optim.swa_utils.AveragedModel; once the clock compresses the schedule, the same share of its
    # time); 0 = none
    min_chunk: int = 8  # shortest text chunk fed separately to the rows still running
    threads: int = 2  # 1.56x faster steps than 1 on an idle 2-core machine; use 1 when the other core is busy
    # (OpenMP barriers stall then). Also the number of processes that render a step's scenes (1: rendered in-process)
    monitor_every: int = 200  # steps between held-out accuracy checks (0 = never)
    monitor_items: int = 180
    d_model: int | None = None  # override the demo config's Mamba width / depth (None = model_config defaults)
    n_layer: int | None = None
    d_state: int | None = None
    image_token_order: str = "columns"  # the order the language model reads the patches in (CobraConfig; the
    # release reads rows; columns bring objects of different columns left to right, docs/DEMO_MODEL.md session 20)
    # stage 1, the vision warm-up (the release starts from pretrained DINOv2 / SigLIP; ours start from scratch)
    vision_steps: int = 3600
    vision_lr: float = 1e-3
    vision_images: int = 64  # scenes per vision warm-up step
    # the local target: weight of the warm-up's per-patch object-centre offsets; > 0 also gives the oracle's tokens
    # each patch's own object (`patch_inventory`), so the projector learns to pass it on; 0 = neither
    local_weight: float = 10.0
    oracle_places: bool = False  # whether the oracle's tokens give each object's place from the left and the top
    # (False: presence and centres only, so the language model learns to order objects from the image itself)
    # the oracle stage: the first `oracle_steps` of stage 2 read perfect vision (OracleTokens) instead of the images;
    # then the projector learns to output those tokens (`projector_steps`, the tower frozen), and stage 2 goes on
    oracle_steps: int = 600
    projector_steps: int = 300
    vision_lr_scale: float = 0.0  # stage 2 learning rate of the tower relative to the rest; 0 = frozen (the release)
    # stage 2's auxiliary look-up losses (LookupHeads): their weight, and the blocks whose outputs they read (0-based)
    lookup_loss_weight: float = 1.0
    lookup_layer: int = 1
    offset_layer: int = 2
    verdict_layer: int = 3

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
