"""Train the offline demo Cobra on synthetic scenes (issue 4): `python -m cobra_app.demo.train --out assets/demo-model`.

Stage 1, the vision warm-up (`warm_up_vision`): the release starts from pretrained DINOv2 and SigLIP towers; ours start
from scratch, so they first learn alone (linear heads, then discarded) to name the shape and colour under each patch
and, at every patch, the whole scene: which objects are present and where (`scene_inventory`).
Stage 2, the release's single-stage recipe in miniature (the tower frozen, as the release's is, unless
`vision_lr_scale` > 0): each example is [image patches] + the per-turn Zephyr token ids exactly as inference builds
them (`TurnTokenizer.user_turn_ids` / `assistant_turn_ids`), and the loss covers the assistant tokens only (their EOS
included), plus an auxiliary object loss at the tokens that name objects (`ObjectHead`, discarded after training).

Speed on a 2-core CPU comes from exactness-preserving batching, not from changing the model:
- all questions about one scene share its image: the vision tower runs once per scene, and so does the Mamba over the
  image patches; every question row then continues from that recurrent state (a Mamba continues exactly from a state);
- rows are sorted by length and fed in chunks, each chunk only to the rows that are still running (again continuing
  from the state), so short rows do not pay for the padding of long ones. Right padding inside a chunk only follows a
  row's last token, which a causal recurrent model never lets influence earlier positions; padded positions carry no
  loss.
Deterministic for a fixed seed (data order, initialisation, schedule) as long as the run finishes within its time
budget; when it would not, the cosine schedule is compressed to end on time and the run stops gracefully and saves.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import time
from collections.abc import Iterator, Sequence
from functools import cache
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from cobra_app.demo.conversations import FOLLOW_UPS, QA, iter_training_examples, make_eval_set
from cobra_app.demo.model_config import demo_config
from cobra_app.demo.scenes import COLOURS, PAIRS, SHAPES, Scene, object_map, render, sample_scene
from cobra_app.demo.tokenizer import build_demo_tokenizer
from cobra_app.model.cobra import CobraConfig, CobraVLM
from cobra_app.model.mamba import LayerState, MambaState
from cobra_app.prompting import TurnTokenizer, get_prompt_builder

IGNORE = -100  # label of positions without loss
LOG_FILE = "train_log.jsonl"  # one JSON object per optimizer step, written next to the model
INFO_FILE = "training.json"  # the run's settings and outcome, written next to the model
MONITOR_SEED = 777  # held-out scenes for the accuracy printed during training (not the reported evaluation)


@dataclass
class TrainConfig:
    """Training hyper-parameters (defaults: the shipped model's recipe)."""

    seed: int = 0
    steps: int = 2400  # optimizer steps of the cosine schedule
    max_minutes: float = 45.0  # hard wall-clock budget (model building and saving included)
    rows_per_batch: int = 48  # question rows per step (scenes are added whole until this is reached)
    multi_turn_prob: float = 0.3  # share of multi-turn conversations kept whole (the rest: one row per question)
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    min_chunk: int = 8  # shortest text chunk fed separately to the rows still running
    threads: int = 1  # 1 beats 2 on a shared 2-core machine (OpenMP barriers stall when the other core is busy)
    monitor_every: int = 200  # steps between held-out accuracy checks (0 = never)
    monitor_items: int = 180
    d_model: int | None = None  # override the demo config's Mamba width / depth (None = model_config defaults)
    n_layer: int | None = None
    d_state: int | None = None
    # stage 1, the vision warm-up (the release starts from pretrained DINOv2 / SigLIP; ours start from scratch)
    vision_steps: int = 1500
    vision_lr: float = 1e-3
    vision_images: int = 64  # scenes per vision warm-up step
    vision_lr_scale: float = 0.0  # stage 2 learning rate of the tower relative to the rest; 0 = frozen (the release)
    # stage 2's auxiliary object loss (ObjectHead): its weight, and the block whose output it reads (0-based)
    object_loss_weight: float = 1.0
    object_loss_layer: int = 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------------------------------
# data: scenes -> token rows


_FOLLOW_UP_RE = re.compile(
    "|".join("^" + re.sub(r"\\\{\w+\\\}", ".+", re.escape(t)) + "$" for ts in FOLLOW_UPS.values() for t in ts)
)


def is_follow_up(question: str) -> bool:
    """Whether a question is a short follow-up ("And the square?") that only makes sense after an earlier turn."""
    return bool(_FOLLOW_UP_RE.match(question))


def encode_turns(turns: Sequence[QA], tokens: TurnTokenizer) -> tuple[list[int], list[bool]]:
    """A conversation's text ids (per-turn Zephyr tokenization, as at inference) and which ids are assistant tokens."""
    ids: list[int] = []
    assistant: list[bool] = []
    for i, qa in enumerate(turns):
        user, reply = tokens.user_turn_ids(qa.question, first=i == 0), tokens.assistant_turn_ids(qa.answer)
        ids += user + reply
        assistant += [False] * len(user) + [True] * len(reply)
    return ids, assistant


def labels_for(ids: Sequence[int], assistant: Sequence[bool]) -> list[int]:
    """Next-token labels: position t predicts ids[t + 1] when that is an assistant token, else IGNORE.

    (The image patches come first, so the first text token is predicted from an image position: never an assistant
    token, hence no loss there.)"""
    return [ids[t + 1] if assistant[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]


def rows_for_conversation(conversation: Sequence[QA], rng: np.random.Generator, multi_turn_prob: float) -> list[list[QA]]:
    """Rows a conversation is trained as: the whole conversation (multi-turn format) with probability
    `multi_turn_prob`, else each self-contained question as its own single-turn row (follow-ups need their context
    and are dropped there)."""
    if len(conversation) > 1 and rng.random() < multi_turn_prob:
        return [list(conversation)]
    return [[qa] for qa in conversation if not is_follow_up(qa.question)] or [[conversation[0]]]


@dataclass
class Batch:
    """Scenes (pixels) and the text rows that continue from their image state, sorted by length (longest first)."""

    pixel_values: dict[str, Tensor]  # {branch: [S, 3, H, W]}
    row_scene: Tensor  # [R] index of each row's scene
    ids: Tensor  # [R, Lmax] right-padded text ids
    labels: Tensor  # [R, Lmax] IGNORE outside assistant-token targets
    lengths: list[int]  # text lengths, non-increasing
    chunks: list[tuple[int, int, int]]  # (start, end, active rows): feed ids[:active, start:end]
    order: list[int]  # order[r] = index (in the `rows` given to make_batch) of sorted row r
    objects: Tensor  # [R, Lmax, 3] (present, x, y) in the row's scene of the object a text token names (ObjectHead)
    names_object: Tensor  # [R, Lmax] bool: the text token is an object name ("red square")

    @property
    def num_label_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())


def chunk_plan(lengths: Sequence[int], min_chunk: int) -> list[tuple[int, int, int]]:
    """Split text positions [0, max(lengths)) into chunks ending at row lengths (at least `min_chunk` long, except
    the last); each chunk goes to the rows still running at its start. `lengths` must be non-increasing."""
    plan, start = [], 0
    distinct = sorted(set(lengths))
    for end in distinct:
        if end - start >= min_chunk or end == distinct[-1]:
            plan.append((start, end, sum(1 for n in lengths if n > start)))
            start = end
    return plan


@cache
def object_pair_of_token(tokens: TurnTokenizer) -> Tensor:
    """[vocab] index in PAIRS of the object each token names (" red square", one token in the demo tokenizer), -1 for
    tokens that name none."""
    pair_of = torch.full((len(tokens.tokenizer),), -1, dtype=torch.long)
    for k, (shape, colour) in enumerate(PAIRS):
        (token,) = tokens.tokenizer(f" {colour} {shape}", add_special_tokens=False)["input_ids"]
        pair_of[token] = k
    return pair_of


def make_batch(
    scenes: Sequence[Scene],
    rows: Sequence[tuple[int, list[QA]]],
    tokens: TurnTokenizer,
    image_transform,
    image_size: int,
    min_chunk: int = 8,
    pad_id: int | None = None,
) -> Batch:
    """scenes + rows (scene index, turns) -> a Batch. Images are rendered at `image_size` and transformed exactly as
    at inference (`vlm.image_transform`)."""
    pixels = [image_transform(render(scene, image_size)) for scene in scenes]
    pixel_values = {name: torch.stack([p[name] for p in pixels]) for name in pixels[0]}
    unsorted = [(scene_idx, *encode_turns(turns, tokens)) for scene_idx, turns in rows]
    order = sorted(range(len(unsorted)), key=lambda r: -len(unsorted[r][1]))  # stable: ties keep their order
    encoded = [unsorted[r] for r in order]
    lengths = [len(ids) for _, ids, _ in encoded]
    pad = tokens.eos_id if pad_id is None else pad_id
    ids = torch.full((len(encoded), lengths[0]), pad, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE)
    for r, (_, row_ids, assistant) in enumerate(encoded):
        ids[r, : len(row_ids)] = torch.tensor(row_ids)
        labels[r, : len(row_ids)] = torch.tensor(labels_for(row_ids, assistant))
    row_scene = torch.tensor([scene_idx for scene_idx, _, _ in encoded])
    inventories = torch.from_numpy(np.stack([scene_inventory(scene) for scene in scenes]))  # [S, 3, pairs]
    pair = object_pair_of_token(tokens)[ids]  # [R, Lmax], -1: names no object
    names_object = (pair >= 0) & (torch.arange(ids.shape[1]) < torch.tensor(lengths)[:, None])
    objects = inventories[row_scene[:, None], :, pair.clamp(min=0)]  # [R, Lmax, 3]
    return Batch(pixel_values, row_scene, ids, labels, lengths, chunk_plan(lengths, min_chunk), order, objects,
                 names_object)


class BatchStream:
    """Endless deterministic stream of training batches from `iter_training_examples(seed)`."""

    def __init__(self, seed: int, tokens: TurnTokenizer, image_transform, image_size: int, cfg: TrainConfig):
        self.examples = iter_training_examples(seed)
        self.rng = np.random.default_rng([seed, 1])  # row-format choices
        self.tokens, self.image_transform, self.image_size, self.cfg = tokens, image_transform, image_size, cfg

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        scenes: list[Scene] = []
        rows: list[tuple[int, list[QA]]] = []
        while len(rows) < self.cfg.rows_per_batch:
            scene, conversation = next(self.examples)
            rows += [(len(scenes), turns) for turns in rows_for_conversation(conversation, self.rng,
                                                                             self.cfg.multi_turn_prob)]
            scenes.append(scene)
        return make_batch(scenes, rows, self.tokens, self.image_transform, self.image_size, self.cfg.min_chunk)


# ----------------------------------------------------------------------------------------------------------------------
# model pass


def _select(state: MambaState, index: Tensor | slice) -> MambaState:
    """Rows of a batched state (differentiable: gradients of shared rows add up)."""
    return MambaState([LayerState(l.conv[index], l.ssm[index]) for l in state.layers], state.seqlen)


def batch_logits(vlm: CobraVLM, batch: Batch) -> Iterator[tuple[int, int, int, Tensor]]:
    """Run a batch: yields (start, end, active rows, logits [active, end - start, V]) chunk by chunk.

    Image patches first (once per scene), then each row's text on top of its scene's state, exactly as one
    [image + text] sequence per row would be processed."""
    image_embeds = vlm.encode_images(batch.pixel_values)  # [S, P, d]
    _, state = vlm.llm(inputs_embeds=image_embeds, logits_to_keep=1)
    state = _select(state, batch.row_scene)  # [R] rows, each from its scene's state
    for start, end, active in batch.chunks:
        logits, state = vlm.llm(batch.ids[:active, start:end], state=_select(state, slice(0, active)))
        yield start, end, active, logits


class ObjectHead(nn.Module):
    """Stage 2's auxiliary read-out (discarded after training): at every token that names an object ("red square",
    in a question or an answer), the residual stream after block `layer` says whether that object is in the image and
    where its centre is.

    Why: existence and spatial questions are keyed by the objects they name, and their Yes/No answers give no partial
    credit, so the language model gets no gradient towards looking an object up until it already can; this loss pays
    for the look-up one step earlier, at the name itself (measured in docs/DEMO_MODEL.md)."""

    def __init__(self, d_model: int, layer: int, weight: float) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, 3)
        self.layer, self.weight = layer, weight

    def loss(self, stream: Tensor, objects: Tensor, names_object: Tensor) -> Tensor:
        """stream [R, L, d]; objects [R, L, 3] (present, x, y); names_object [R, L] -> summed loss over the named
        objects (presence binary cross-entropy, plus 10 x the squared centre error of present ones)."""
        presence, where = object_errors(self.proj(stream), objects)  # [R, L] each
        return ((presence + 10 * where) * names_object).sum()


def batch_loss(vlm: CobraVLM, batch: Batch, object_head: ObjectHead | None = None) -> Tensor:
    """Mean cross-entropy over the batch's assistant tokens, plus (with `object_head`) its weight x its mean loss
    over the tokens that name objects."""
    total, objects = torch.zeros(()), torch.zeros(())
    streams: list[Tensor] = []  # output of block `object_head.layer` (residual + hidden), one per llm call
    hook = (vlm.llm.backbone.layers[object_head.layer].register_forward_hook(
        lambda module, inputs, out: streams.append(out[1] + out[0].float())) if object_head else None)
    try:
        for start, end, active, logits in batch_logits(vlm, batch):
            labels = batch.labels[:active, start:end]
            total = total + F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                                            reduction="sum")
            if object_head:
                objects = objects + object_head.loss(streams[-1], batch.objects[:active, start:end],
                                                     batch.names_object[:active, start:end])
                streams.clear()
    finally:
        if hook:
            hook.remove()
    loss = total / max(batch.num_label_tokens, 1)
    if object_head:
        loss = loss + object_head.weight * objects / max(int(batch.names_object.sum()), 1)
    return loss


@torch.no_grad()
def monitor_accuracy(vlm: CobraVLM, items, tokens: TurnTokenizer, image_size: int, batch_rows: int = 60) -> dict:
    """Teacher-forced exact match on single-turn held-out items: a reply is right when the arg-max at every reply
    position (its EOS included) is the reference token, i.e. when greedy decoding reproduces it. Per kind."""
    was_training = vlm.training
    vlm.eval()
    hits: dict[str, list[bool]] = {}
    for i in range(0, len(items), batch_rows):
        chunk = items[i : i + batch_rows]
        batch = make_batch([s for s, _ in chunk], [(j, [qa]) for j, (_, qa) in enumerate(chunk)], tokens,
                           vlm.image_transform, image_size, min_chunk=1)
        ok = torch.ones(len(chunk), dtype=torch.bool)
        for start, end, active, logits in batch_logits(vlm, batch):
            labels = batch.labels[:active, start:end]
            wrong = (logits.argmax(-1) != labels) & (labels != IGNORE)
            ok[:active] &= ~wrong.any(-1)
        for r, j in enumerate(batch.order):
            hits.setdefault(chunk[j][1].kind, []).append(bool(ok[r]))
    vlm.train(was_training)
    return {kind: sum(v) / len(v) for kind, v in sorted(hits.items())}


# ----------------------------------------------------------------------------------------------------------------------
# stage 1: vision warm-up on per-patch scene labels

SHAPE_CLASSES = ("background", *SHAPES)  # per-patch targets of the vision warm-up
COLOUR_CLASSES = ("background", *COLOURS)
VISION_STREAM = 2  # seed-sequence key of the warm-up's scenes (the VLM stage draws from TRAIN_STREAM)


def patch_targets(scene: Scene, image_size: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-patch labels, row-major like the ViT's patch tokens: (shape class [grid²], colour class [grid²]) of the
    object covering most pixels of each patch (indices into SHAPE_CLASSES / COLOUR_CLASSES; 0 = background)."""
    patch = image_size // grid
    owners = object_map(scene, image_size).reshape(grid, patch, grid, patch).transpose(0, 2, 1, 3)
    owners = owners.reshape(grid * grid, patch * patch)  # [P, pixels] object index + 1 (0 = background)
    counts = np.stack([(owners == k + 1).sum(1) for k in range(len(scene.objects))], 1)  # [P, objects]
    owner = np.where(counts.max(1) > 0, counts.argmax(1) + 1, 0)  # [P]
    shape_of = np.array([0] + [SHAPE_CLASSES.index(o.shape) for o in scene.objects])
    colour_of = np.array([0] + [COLOUR_CLASSES.index(o.colour) for o in scene.objects])
    return shape_of[owner], colour_of[owner]


def scene_inventory(scene: Scene) -> np.ndarray:
    """The whole scene as one target [3, len(PAIRS)]: presence of each (shape, colour) pair, and its centre x, y."""
    inventory = np.zeros((3, len(PAIRS)), dtype=np.float32)
    for o in scene.objects:
        k = PAIRS.index((o.shape, o.colour))
        inventory[:, k] = (1.0, o.x, o.y)
    return inventory


def object_errors(predicted: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """predicted [..., 3] (presence logit, x, y), target [..., 3] (present 0/1, x, y) -> (presence binary
    cross-entropy [...], squared centre error [...], 0 where the object is absent)."""
    present = target[..., 0]
    presence = F.binary_cross_entropy_with_logits(predicted[..., 0], present, reduction="none")
    where = ((predicted[..., 1:] - target[..., 1:]) ** 2).sum(-1) * present
    return presence, where


class WarmUpHead(nn.Module):
    """Linear read-outs of the vision warm-up (discarded afterwards), applied to every patch: the shape and colour
    under the patch, and the scene's whole inventory (which pairs are present, and where)."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.patch = nn.Linear(embed_dim, len(SHAPE_CLASSES) + len(COLOUR_CLASSES))
        self.inventory = nn.Linear(embed_dim, 3 * len(PAIRS))

    def loss(self, features: Tensor, shapes: Tensor, colours: Tensor, inventory: Tensor) -> Tensor:
        """features [B, P, C]; shapes, colours [B, P] class indices; inventory [B, 3, len(PAIRS)] -> summed losses
        (cross-entropies, presence binary cross-entropy, squared error of present pairs' centres)."""
        shape_logits, colour_logits = self.patch(features).split([len(SHAPE_CLASSES), len(COLOUR_CLASSES)], dim=-1)
        predicted = self.inventory(features).unflatten(-1, (3, len(PAIRS))).transpose(-1, -2)  # [B, P, pairs, 3]
        presence, where = object_errors(predicted, inventory.transpose(-1, -2)[:, None].expand_as(predicted))
        return (F.cross_entropy(shape_logits.flatten(0, 1), shapes.flatten())
                + F.cross_entropy(colour_logits.flatten(0, 1), colours.flatten())
                + presence.mean() * len(PAIRS) / 4
                + 10 * (where.sum(-1) / inventory[:, None, 0].sum(-1)).mean())


def warm_up_vision(vlm: CobraVLM, cfg: TrainConfig, progress: bool = True, deadline: float | None = None) -> list[dict]:
    """Stage 1: train the vision tower alone to name the shape and colour under each patch (`WarmUpHead`), the
    stand-in for the release's pretrained DINOv2 / SigLIP. Only the tower's weights change. Stops early at `deadline`
    (a `time.monotonic()` value). Returns the loss log."""
    vision, image_size = vlm.vision_backbone, vlm.config.vision.image_size
    grid = image_size // vlm.config.vision.branches[0].patch_size  # patches per side
    head = WarmUpHead(vision.embed_dim)
    params = [*vision.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.vision_lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng([cfg.seed, VISION_STREAM])
    schedule = TrainConfig(lr=cfg.vision_lr, warmup_steps=min(50, cfg.vision_steps), min_lr_ratio=cfg.min_lr_ratio)
    log = []
    for step in tqdm(range(cfg.vision_steps), disable=not progress, dynamic_ncols=True, desc="vision warm-up"):
        if deadline is not None and time.monotonic() > deadline:
            break
        cosine_progress = (step - schedule.warmup_steps) / max(cfg.vision_steps - schedule.warmup_steps, 1)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(schedule, step, cosine_progress)
        scenes = [sample_scene(rng) for _ in range(cfg.vision_images)]
        pixels = [vlm.image_transform(render(scene, image_size)) for scene in scenes]
        targets = [patch_targets(scene, image_size, grid) for scene in scenes]
        shapes, colours = (torch.from_numpy(np.stack(t)) for t in zip(*targets))  # [B, P] each
        inventory = torch.from_numpy(np.stack([scene_inventory(scene) for scene in scenes]))  # [B, 3, pairs]
        features = vision({name: torch.stack([p[name] for p in pixels]) for name in pixels[0]})  # [B, P, C]
        loss = head.loss(features, shapes, colours, inventory)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        log.append({"vision_step": step + 1, "loss": round(loss.item(), 5)})
    return log


# ----------------------------------------------------------------------------------------------------------------------
# optimisation


NO_DECAY_SUFFIXES = ("A_log", "D", "bias", "norm.weight", "norm_f.weight", "pos_embed", "cls_token", "reg_token",
                     "conv1d.weight", "gamma")


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


# Token embeddings start at std 0.1 (transformers' Mamba default) instead of mamba_ssm's 0.02. Measured on a minimal
# recall task (1-4 of 30 items among 16 tokens, then "was q among them?"; 2 layers, d_model 128, batch 64, AdamW 2e-3):
# std 0.02 stays at chance for 800 steps, std 0.1 reaches 0.80 at 300 and 0.99 at 800 steps, like transformers'
# MambaForCausalLM on the same data (0.85 at 400). Small embeddings vanish next to the blocks' outputs in the residual
# stream, and the model cannot tell which token it is recalling (docs/DEMO_MODEL.md).
EMBEDDING_INIT_STD = 0.1


def build_model(config: CobraConfig, seed: int) -> CobraVLM:
    """Fresh model: timm's ViT init, default projector init, Mamba's init with EMBEDDING_INIT_STD (all from `seed`)."""
    torch.manual_seed(seed)
    vlm = CobraVLM(config)
    vlm.llm.init_weights(torch.Generator().manual_seed(seed), embedding_std=EMBEDDING_INIT_STD)
    return vlm


@dataclass
class TrainResult:
    vlm: CobraVLM
    steps_done: int
    wall_seconds: float
    stopped_by: str  # "steps" | "time"
    log: list[dict] = field(default_factory=list)  # stage 2 (VLM), one entry per step
    vision_log: list[dict] = field(default_factory=list)  # stage 1 (vision warm-up)


def train(
    cfg: TrainConfig,
    out_dir: Path | None = None,
    config: CobraConfig | None = None,
    tokenizer=None,
    progress: bool = True,
) -> TrainResult:
    """Train; with `out_dir`, save the model directory, the loss log and the run info there."""
    t0 = time.monotonic()
    torch.set_num_threads(cfg.threads)
    tokenizer = tokenizer or build_demo_tokenizer()
    overrides = {k: v for k in ("d_model", "n_layer", "d_state") if (v := getattr(cfg, k)) is not None}
    config = config or demo_config(len(tokenizer), **overrides)
    tokens = TurnTokenizer(tokenizer, get_prompt_builder(config.prompt_format))
    vlm = build_model(config, cfg.seed).train()
    budget = cfg.max_minutes * 60
    reserve = 20.0  # seconds kept for saving
    vision_log = warm_up_vision(vlm, cfg, progress, deadline=t0 + budget - reserve) if cfg.vision_steps else []
    image_size = config.vision.image_size
    stream = BatchStream(cfg.seed, tokens, vlm.image_transform, image_size, cfg)
    monitor_items = make_eval_set(MONITOR_SEED, cfg.monitor_items) if cfg.monitor_every else []
    if cfg.vision_lr_scale == 0:
        vlm.vision_backbone.requires_grad_(False)
    object_head = (ObjectHead(config.llm.d_model, cfg.object_loss_layer, cfg.object_loss_weight)
                   if cfg.object_loss_weight else None)
    groups = param_groups(vlm, cfg.weight_decay, cfg.vision_lr_scale)
    if object_head:
        groups.append({"params": list(object_head.parameters()), "weight_decay": 0.0, "lr_scale": 1.0})
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    log_file = None
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        log_file = open(Path(out_dir) / LOG_FILE, "w")
    log: list[dict] = []
    stopped_by, ema = "steps", None
    bar = tqdm(total=cfg.steps, disable=not progress, dynamic_ncols=True, desc="train")
    train_start = time.monotonic()
    try:
        for step in range(cfg.steps):
            elapsed = time.monotonic() - t0
            if elapsed > budget - reserve:
                stopped_by = "time"
                break
            # cosine progress: by step, or by time when the run is behind its budget (keeps the end on time)
            steps_left = cfg.steps - cfg.warmup_steps
            step_progress = (step - cfg.warmup_steps) / max(steps_left, 1)
            time_progress = (elapsed - (train_start - t0)) / max(budget - reserve - (train_start - t0), 1)
            lr = lr_at(cfg, step, max(step_progress, time_progress if step >= cfg.warmup_steps else 0.0))
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            batch = next(stream)
            loss = batch_loss(vlm, batch, object_head)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.grad_clip))
            optimizer.step()
            value = loss.item()
            ema = value if ema is None else 0.95 * ema + 0.05 * value
            entry = {"step": step + 1, "loss": round(value, 5), "lr": lr, "grad_norm": round(grad_norm, 4),
                     "rows": len(batch.lengths), "scenes": int(batch.row_scene.max()) + 1,
                     "tokens": batch.num_label_tokens, "elapsed_s": round(time.monotonic() - t0, 2)}
            if cfg.monitor_every and ((step + 1) % cfg.monitor_every == 0 or step + 1 == cfg.steps):
                entry["monitor"] = monitor_accuracy(vlm, monitor_items, tokens, image_size)
                tqdm.write(f"step {step + 1}: loss(ema) {ema:.4f} held-out teacher-forced accuracy "
                           + " ".join(f"{k} {v:.2f}" for k, v in entry["monitor"].items()), file=sys.stderr)
            log.append(entry)
            if log_file:
                log_file.write(json.dumps(entry) + "\n")
                log_file.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{ema:.4f}", lr=f"{lr:.2e}")
    finally:
        bar.close()
        if log_file:
            log_file.close()
    steps_done = len(log)
    vlm.eval()
    result = TrainResult(vlm, steps_done, time.monotonic() - t0, stopped_by, log, vision_log)
    if out_dir is not None:
        save(result, cfg, tokenizer, Path(out_dir), time.monotonic() - train_start)
    return result


def save(result: TrainResult, cfg: TrainConfig, tokenizer, out_dir: Path, train_seconds: float) -> Path:
    """Write the model directory (fp32 safetensors) and the run info next to the loss log."""
    from cobra_app.loading import save_model_dir  # here: loading imports transformers/hub machinery

    save_model_dir(result.vlm, tokenizer, out_dir)
    losses = [e["loss"] for e in result.log]
    info = {
        "command": "python -m cobra_app.demo.train " + " ".join(sys.argv[1:]) if sys.argv else "",
        "train_config": cfg.to_dict(),
        "steps_done": result.steps_done,
        "stopped_by": result.stopped_by,
        "wall_seconds": round(result.wall_seconds, 1),
        "train_loop_seconds": round(train_seconds, 1),
        "parameters": sum(p.numel() for p in result.vlm.parameters()),
        "weights_bytes": (out_dir / "model.safetensors").stat().st_size,
        "vision_warm_up_loss_last_50": _mean([e["loss"] for e in result.vision_log][-50:]),
        "loss_first_50": _mean(losses[:50]),
        "loss_last_50": _mean(losses[-50:]),
        "monitor": [{"step": e["step"], **e["monitor"]} for e in result.log if "monitor" in e],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


def _mean(values: Sequence[float]) -> float | None:
    return round(sum(values) / len(values), 5) if values else None


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
    p.add_argument("--multi-turn-prob", type=float, default=defaults.multi_turn_prob)
    p.add_argument("--threads", type=int, default=defaults.threads)
    p.add_argument("--monitor-every", type=int, default=defaults.monitor_every, help="0 = no held-out checks")
    p.add_argument("--vision-steps", type=int, default=defaults.vision_steps, help="stage 1 steps (0 = skip)")
    p.add_argument("--d-model", type=int, default=None)
    p.add_argument("--n-layer", type=int, default=None)
    p.add_argument("--d-state", type=int, default=None)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    cfg = dataclasses.replace(
        defaults, seed=args.seed, steps=args.steps, max_minutes=args.max_minutes, rows_per_batch=args.rows_per_batch,
        lr=args.lr, warmup_steps=min(args.warmup_steps, args.steps), multi_turn_prob=args.multi_turn_prob,
        threads=args.threads, monitor_every=args.monitor_every, d_model=args.d_model, n_layer=args.n_layer,
        d_state=args.d_state, vision_steps=args.vision_steps,
    )
    return args, cfg


def main(argv: Sequence[str] | None = None) -> int:
    args, cfg = parse_args(argv)
    result = train(cfg, args.out, progress=not args.no_progress)
    size = (args.out / "model.safetensors").stat().st_size
    print(f"saved {args.out} after {result.steps_done} steps in {result.wall_seconds / 60:.1f} min "
          f"(stopped by {result.stopped_by}); weights {size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
