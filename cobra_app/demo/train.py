"""Train the offline demo Cobra on synthetic scenes (issue 4): `python -m cobra_app.demo.train --out assets/demo-model`.

Stage 1, the vision warm-up (`warm_up_vision`): the release starts from pretrained DINOv2 and SigLIP towers; ours start
from scratch, so they first learn alone (linear heads, then discarded) to name the shape and colour under each patch
and, at every patch, the whole scene: which objects are present and where (`scene_inventory`).
Stage 2 starts with an oracle stage (`OracleTokens`: the language model reads perfect vision, a linear map of the
scene's inventory, for `oracle_steps`; then `warm_up_projector` teaches the projector to produce those tokens from the
tower), and goes on as the release's single-stage recipe in miniature (the tower frozen, as the release's is, unless
`vision_lr_scale` > 0): each example is [image patches] + the per-turn Zephyr token ids exactly as inference builds
them (`TurnTokenizer.user_turn_ids` / `assistant_turn_ids`), and the loss covers the assistant tokens only (their EOS
included), plus auxiliary look-up losses at the tokens that name objects, shapes or colours (`LookupHeads`, discarded
after training).

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
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from cobra_app.demo.conversations import FOLLOW_UPS, QA, RELATION_PHRASES, iter_training_examples, make_eval_set, plural
from cobra_app.demo.model_config import demo_config
from cobra_app.demo.scenes import COLOURS, PAIRS, RELATIONS, SHAPES, Scene, object_map, render, sample_scene
from cobra_app.demo.tokenizer import RELATION_WORDS, build_demo_tokenizer
from cobra_app.model.cobra import CobraConfig, CobraVLM
from cobra_app.model.mamba import LayerState, MambaState
from cobra_app.model.ops import get_ops
from cobra_app.prompting import TurnTokenizer, get_prompt_builder

IGNORE = -100  # label of positions without loss
LOG_FILE = "train_log.jsonl"  # one JSON object per optimizer step, written next to the model
INFO_FILE = "training.json"  # the run's settings and outcome, written next to the model
MONITOR_SEED = 777  # held-out scenes for the accuracy printed during training (not the reported evaluation)


@dataclass
class TrainConfig:
    """Training hyper-parameters (defaults: the shipped model's recipe)."""

    seed: int = 0
    steps: int = 4000  # optimizer steps of the cosine schedule (stage 2, the oracle stage included)
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

    pixel_values: dict[str, Tensor]  # {branch: [S, 3, H, W]}; empty when the batch is read with given image tokens
    inventories: Tensor  # [S, 3, pairs] each scene's `scene_inventory` (what the oracle stage's image tokens encode)
    row_scene: Tensor  # [R] index of each row's scene
    ids: Tensor  # [R, Lmax] right-padded text ids
    labels: Tensor  # [R, Lmax] IGNORE outside assistant-token targets
    lengths: list[int]  # text lengths, non-increasing
    chunks: list[tuple[int, int, int]]  # (start, end, active rows): feed ids[:active, start:end]
    order: list[int]  # order[r] = index (in the `rows` given to make_batch) of sorted row r
    lookup: Tensor  # [R, Lmax, LOOKUP_SLOTS] what each text token's name refers to in the row's scene (LookupHeads)
    lookup_mask: Tensor  # [R, Lmax, LOOKUP_SLOTS] bool: which of those slots apply to the token
    offsets: Tensor  # [R, Lmax, 3] a named object's centre minus that of the object named before it in the row (x, y),
    # and, after a relation word, how far that relation holds: "A left of B" at B -> B.x - A.x (RELATIONS' sign)
    offset_mask: Tensor  # [R, Lmax, 3] bool: both objects are in the scene (x, y); and B follows a relation word
    verdicts: Tensor  # [R, Lmax] 1 where the relation last stated in the row holds, else 0 (from its object B through
    # the position that predicts the answer: the statement's truth is carried to the reply)
    verdict_mask: Tensor  # [R, Lmax] bool: the positions where `verdicts` apply

    @property
    def num_label_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())

    @property
    def lookup_targets(self) -> tuple[Tensor, ...]:
        """The targets of `LookupHeads.loss`, in its argument order (each [R, Lmax, ...])."""
        return self.lookup, self.lookup_mask, self.offsets, self.offset_mask, self.verdicts, self.verdict_mask

    @property
    def num_lookup_positions(self) -> int:
        """Text positions with a look-up target (a name, or a verdict carried)."""
        return int((self.lookup_mask.any(-1) | self.verdict_mask).sum())


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


# The look-up targets at a text token, by slot (LookupHeads): for an object name (" red square"), whether that object
# is in the scene and its centre; for a shape word (" square", " squares"), which colours that shape has in the scene;
# for a colour word (" red"), which shapes have that colour.
PRESENT, CENTRE, COLOURS_OF_SHAPE, SHAPES_OF_COLOUR = slice(0, 1), slice(1, 3), slice(3, 9), slice(9, 14)
LOOKUP_SLOTS = 14
assert (COLOURS_OF_SHAPE.stop - COLOURS_OF_SHAPE.start, SHAPES_OF_COLOUR.stop - SHAPES_OF_COLOUR.start) == (
    len(COLOURS), len(SHAPES)) and list(PAIRS) == [(s, c) for s in SHAPES for c in COLOURS]
assert list(RELATION_PHRASES) == list(RELATIONS)  # RELATION_WORDS are in RELATIONS' order


@cache
def token_keys(tokens: TurnTokenizer) -> Tensor:
    """[vocab, 4] what each token names: (index in PAIRS, in SHAPES, in COLOURS, in RELATIONS), -1 where it names none
    of these. Object names, shape words (singular and plural), colour words and relation phrases (" above the") are
    single tokens of the demo tokenizer."""
    keys = torch.full((len(tokens.tokenizer), 4), -1, dtype=torch.long)
    entries = [(0, k, f"{colour} {shape}") for k, (shape, colour) in enumerate(PAIRS)]
    entries += [(1, k, word) for k, shape in enumerate(SHAPES) for word in (shape, plural(shape))]
    entries += [(2, k, colour) for k, colour in enumerate(COLOURS)]
    entries += [(3, k, word) for k, word in enumerate(RELATION_WORDS)]
    for column, k, word in entries:
        (token,) = tokens.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        keys[token, column] = k
    return keys


def lookup_targets(inventories: Tensor, row_scene: Tensor, ids: Tensor, labels: Tensor, lengths: Sequence[int],
                   tokens: TurnTokenizer) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """inventories [S, 3, pairs] (`scene_inventory`), row_scene [R], ids and labels [R, L] -> the Batch's (lookup,
    lookup_mask, offsets, offset_mask, verdicts, verdict_mask)."""
    R, L = ids.shape
    inside = torch.arange(L) < torch.tensor(lengths)[:, None]  # [R, L]
    pair, shape, colour, relation = (k.masked_fill(~inside, -1) for k in token_keys(tokens)[ids].unbind(-1))  # [R, L]
    scene = inventories[row_scene]  # [R, 3, pairs]
    named = scene[torch.arange(R)[:, None], :, pair.clamp(min=0)]  # [R, L, 3] (present, x, y) of the named object
    grid = scene[:, 0].unflatten(-1, (len(SHAPES), len(COLOURS)))  # [R, shapes, colours] presence
    lookup = torch.zeros(R, L, LOOKUP_SLOTS)
    mask = torch.zeros(R, L, LOOKUP_SLOTS, dtype=torch.bool)
    lookup[..., :3] = named
    mask[..., PRESENT] = (pair >= 0)[..., None]
    mask[..., CENTRE] = ((pair >= 0) & (named[..., 0] > 0))[..., None]
    lookup[..., COLOURS_OF_SHAPE] = grid[torch.arange(R)[:, None], shape.clamp(min=0)]  # [R, L, colours]
    mask[..., COLOURS_OF_SHAPE] = (shape >= 0)[..., None]
    lookup[..., SHAPES_OF_COLOUR] = grid.transpose(1, 2)[torch.arange(R)[:, None], colour.clamp(min=0)]
    mask[..., SHAPES_OF_COLOUR] = (colour >= 0)[..., None]
    # the object named before each position: the latest object-name position strictly before it
    latest = torch.where(pair >= 0, torch.arange(L), -1).cummax(dim=1).values  # [R, L]
    before = F.pad(latest[:, :-1], (1, 0), value=-1)  # [R, L]
    previous = named.gather(1, before.clamp(min=0)[..., None].expand(-1, -1, 3))  # [R, L, 3]
    has_offset = (pair >= 0) & (before >= 0) & (named[..., 0] > 0) & (previous[..., 0] > 0)  # [R, L]
    offsets = torch.zeros(R, L, 3)
    offsets[..., :2] = named[..., 1:] - previous[..., 1:]
    after = F.pad(relation[:, :-1], (1, 0), value=-1)  # [R, L] the relation word just before each token, -1: none
    axis = torch.tensor([0 if coord == "x" else 1 for coord, _ in RELATIONS.values()])[after.clamp(min=0)]  # [R, L]
    sign = torch.tensor([float(s) for _, s in RELATIONS.values()])[after.clamp(min=0)]  # [R, L]
    offsets[..., 2] = sign * offsets[..., :2].gather(-1, axis[..., None])[..., 0]
    offset_mask = torch.stack([has_offset, has_offset, has_offset & (after >= 0)], dim=-1)  # [R, L, 3]
    # the verdict of the latest relation, carried from its object B up to the first answer position after it
    stated = torch.where(offset_mask[..., 2], torch.arange(L), -1).cummax(dim=1).values  # [R, L] position of B
    answers_before = F.pad((labels != IGNORE).long().cumsum(1)[:, :-1], (1, 0))  # [R, L] label positions < t
    verdicts = (offsets[..., 2].gather(1, stated.clamp(min=0)) > 0).float()  # [R, L]
    verdict_mask = (stated >= 0) & (answers_before == answers_before.gather(1, stated.clamp(min=0)))  # [R, L]
    return lookup, mask, offsets * offset_mask, offset_mask, verdicts * verdict_mask, verdict_mask


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
    at inference (`vlm.image_transform`); with `image_transform` None they are not rendered (no pixel values)."""
    pixels = [image_transform(render(scene, image_size)) for scene in scenes] if image_transform else []
    pixel_values = {name: torch.stack([p[name] for p in pixels]) for name in pixels[0]} if pixels else {}
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
    return Batch(pixel_values, inventories, row_scene, ids, labels, lengths, chunk_plan(lengths, min_chunk), order,
                 *lookup_targets(inventories, row_scene, ids, labels, lengths, tokens))


class BatchStream:
    """Endless deterministic stream of training batches from `iter_training_examples(seed)`. The first
    `cfg.oracle_steps` batches carry no pixel values: the oracle stage reads `OracleTokens` in place of the images, so
    rendering them would only cost time (about 0.04 s a step)."""

    def __init__(self, seed: int, tokens: TurnTokenizer, image_transform, image_size: int, cfg: TrainConfig):
        self.examples = iter_training_examples(seed)
        self.rng = np.random.default_rng([seed, 1])  # row-format choices
        self.tokens, self.image_transform, self.image_size, self.cfg = tokens, image_transform, image_size, cfg
        self.served = 0  # batches so far

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
        transform = self.image_transform if self.served >= self.cfg.oracle_steps else None
        self.served += 1
        return make_batch(scenes, rows, self.tokens, transform, self.image_size, self.cfg.min_chunk)


# ----------------------------------------------------------------------------------------------------------------------
# model pass


def _select(state: MambaState, index: Tensor | slice) -> MambaState:
    """Rows of a batched state (differentiable: gradients of shared rows add up)."""
    return MambaState([LayerState(l.conv[index], l.ssm[index]) for l in state.layers], state.seqlen)


def batch_logits(vlm: CobraVLM, batch: Batch, image_embeds: Tensor | None = None
                 ) -> Iterator[tuple[int, int, int, Tensor]]:
    """Run a batch: yields (start, end, active rows, logits [active, end - start, V]) chunk by chunk.

    Image patches first (once per scene; `image_embeds` [S, P, d] in place of the encoded images, e.g. the oracle
    stage's), then each row's text on top of its scene's state, exactly as one [image + text] sequence per row would
    be processed."""
    if image_embeds is None and not batch.pixel_values:
        raise ValueError("this batch carries no images (an oracle-stage batch): give its image tokens")
    image_embeds = vlm.encode_images(batch.pixel_values) if image_embeds is None else image_embeds  # [S, P, d]
    _, state = vlm.llm(inputs_embeds=image_embeds, logits_to_keep=1)
    state = _select(state, batch.row_scene)  # [R] rows, each from its scene's state
    for start, end, active in batch.chunks:
        logits, state = vlm.llm(batch.ids[:active, start:end], state=_select(state, slice(0, active)))
        yield start, end, active, logits


class LookupHeads(nn.Module):
    """Stage 2's auxiliary read-outs (discarded after training), at the tokens that name things:
    - after block `lookup_layer`, at an object name ("red square"): is it in the image, and where is its centre; at a
      shape word ("square"): which colours that shape has in the image; at a colour word: which shapes are that colour;
    - after block `offset_layer`, at an object name: its centre minus that of the object named just before it, and
      after a relation word ("A left of B", at B) how far the relation holds along its axis (> 0: it holds);
    - after block `verdict_layer`, from B through the position that predicts the reply: whether the relation holds.

    Why: the answers to existence and spatial questions are Yes/No, which gives no partial credit, so the language
    model gets no gradient towards looking an object up until it already can; these losses pay for each look-up, and
    for the comparison of two positions, at the words themselves; the verdict pays for carrying the comparison past
    the rest of a statement ('Respond with "True" or "False" directly.') to the answer (measured in
    docs/DEMO_MODEL.md)."""

    def __init__(self, d_model: int, lookup_layer: int, offset_layer: int, verdict_layer: int, weight: float) -> None:
        super().__init__()
        self.lookup = nn.Linear(d_model, LOOKUP_SLOTS)
        self.offset = nn.Linear(d_model, 3)
        self.verdict = nn.Linear(d_model, 1)
        self.lookup_layer, self.offset_layer, self.verdict_layer, self.weight = (lookup_layer, offset_layer,
                                                                                 verdict_layer, weight)

    @property
    def layers(self) -> tuple[int, int, int]:
        return self.lookup_layer, self.offset_layer, self.verdict_layer

    def loss(self, streams: dict[int, Tensor], lookup: Tensor, lookup_mask: Tensor, offsets: Tensor,
             offset_mask: Tensor, verdicts: Tensor, verdict_mask: Tensor) -> Tensor:
        """streams {block: [R, L, d] residual stream after it}; targets as in Batch -> summed loss: binary
        cross-entropy of the presence slots and verdicts, 10 x the squared error of centres and offsets."""
        predicted = self.lookup(streams[self.lookup_layer])  # [R, L, LOOKUP_SLOTS]
        presence, where = object_errors(predicted[..., :CENTRE.stop], lookup[..., :CENTRE.stop])  # [R, L] each
        attributes = F.binary_cross_entropy_with_logits(predicted[..., CENTRE.stop:], lookup[..., CENTRE.stop:],
                                                        reduction="none")  # [R, L, colours + shapes]
        offset_errors = 10 * (self.offset(streams[self.offset_layer]) - offsets) ** 2  # [R, L, 3]
        verdict_errors = F.binary_cross_entropy_with_logits(self.verdict(streams[self.verdict_layer])[..., 0], verdicts,
                                                            reduction="none")  # [R, L]
        return ((presence * lookup_mask[..., PRESENT.start]).sum() + 10 * (where * lookup_mask[..., CENTRE.start]).sum()
                + (attributes * lookup_mask[..., CENTRE.stop:]).sum() + (offset_errors * offset_mask).sum()
                + (verdict_errors * verdict_mask).sum())


def batch_loss(vlm: CobraVLM, batch: Batch, heads: LookupHeads | None = None, image_embeds: Tensor | None = None
               ) -> Tensor:
    """Mean cross-entropy over the batch's assistant tokens, plus (with `heads`) their weight x their loss per token
    that names something or carries a verdict. `image_embeds`: as in `batch_logits`."""
    total, auxiliary = torch.zeros(()), torch.zeros(())
    streams: dict[int, Tensor] = {}  # block -> its output (residual + hidden) in the current llm call
    hooks = [vlm.llm.backbone.layers[layer].register_forward_hook(
        lambda module, inputs, out, layer=layer: streams.__setitem__(layer, out[1] + out[0].float()))
        for layer in (set(heads.layers) if heads else ())]
    try:
        for start, end, active, logits in batch_logits(vlm, batch, image_embeds):
            labels = batch.labels[:active, start:end]
            total = total + F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                                            reduction="sum")
            if heads:
                part = (slice(0, active), slice(start, end))
                auxiliary = auxiliary + heads.loss(streams, *(t[part] for t in batch.lookup_targets))
    finally:
        for hook in hooks:
            hook.remove()
    loss = total / max(batch.num_label_tokens, 1)
    if heads:
        loss = loss + heads.weight * auxiliary / max(batch.num_lookup_positions, 1)
    return loss


@torch.no_grad()
def monitor_accuracy(vlm: CobraVLM, items, tokens: TurnTokenizer, image_size: int,
                     oracle: OracleTokens | None = None, batch_rows: int = 60) -> dict:
    """Teacher-forced exact match on single-turn held-out items: a reply is right when the arg-max at every reply
    position (its EOS included) is the reference token, i.e. when greedy decoding reproduces it. Per kind. With
    `oracle`, the images are read through its tokens (the oracle stage)."""
    was_training = vlm.training
    vlm.eval()
    hits: dict[str, list[bool]] = {}
    for i in range(0, len(items), batch_rows):
        chunk = items[i : i + batch_rows]
        batch = make_batch([s for s, _ in chunk], [(j, [qa]) for j, (_, qa) in enumerate(chunk)], tokens,
                           vlm.image_transform, image_size, min_chunk=1)
        ok = torch.ones(len(chunk), dtype=torch.bool)
        for start, end, active, logits in batch_logits(vlm, batch, oracle(batch.inventories) if oracle else None):
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
VISION_STREAM, PROJECTOR_STREAM = 2, 3  # seed-sequence keys of the warm-ups' scenes (stage 2 draws from TRAIN_STREAM)


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


def warm_up_scenes(rng: np.random.Generator, vlm: CobraVLM, n: int) -> tuple[list[Scene], dict[str, Tensor]]:
    """n fresh scenes and their pixel values, rendered and transformed as at inference."""
    scenes = [sample_scene(rng) for _ in range(n)]
    pixels = [vlm.image_transform(render(scene, vlm.config.vision.image_size)) for scene in scenes]
    return scenes, {name: torch.stack([p[name] for p in pixels]) for name in pixels[0]}


def warm_up_vision(vlm: CobraVLM, cfg: TrainConfig, progress: bool = True, deadline: float | None = None) -> list[dict]:
    """Stage 1: train the vision tower alone to name the shape and colour under each patch and the scene's inventory
    (`WarmUpHead` on every patch), the stand-in for the release's pretrained DINOv2 / SigLIP. Only the tower's weights
    change. Stops early at `deadline` (a `time.monotonic()` value). Returns the loss log."""
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
        scenes, pixel_values = warm_up_scenes(rng, vlm, cfg.vision_images)
        targets = [patch_targets(scene, image_size, grid) for scene in scenes]
        shapes, colours = (torch.from_numpy(np.stack(t)) for t in zip(*targets))  # [B, P] each
        inventory = torch.from_numpy(np.stack([scene_inventory(scene) for scene in scenes]))  # [B, 3, pairs]
        loss = head.loss(vision(pixel_values), shapes, colours, inventory)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        log.append({"vision_step": step + 1, "loss": round(loss.item(), 5)})
    return log


class OracleTokens(nn.Module):
    """The oracle stage's image tokens (discarded after training): perfect vision. Each scene's inventory [3, pairs]
    -> [P, d]: one linear map of the whole inventory at every patch, plus a learned embedding per patch."""

    def __init__(self, num_patches: int, d_model: int) -> None:
        super().__init__()
        self.inventory = nn.Linear(3 * len(PAIRS), d_model)
        self.position = nn.Parameter(torch.randn(num_patches, d_model) * EMBEDDING_INIT_STD)
        nn.init.normal_(self.inventory.weight, std=EMBEDDING_INIT_STD)
        nn.init.zeros_(self.inventory.bias)

    def forward(self, inventories: Tensor) -> Tensor:
        """inventories [S, 3, pairs] -> image tokens [S, P, d]."""
        return self.inventory(inventories.flatten(1))[:, None] + self.position


def warm_up_projector(vlm: CobraVLM, oracle: OracleTokens, cfg: TrainConfig, progress: bool = True,
                      deadline: float | None = None) -> list[dict]:
    """Between the oracle stage and stage 2: the projector alone (the tower frozen) learns to output, from the real
    tower's features, the oracle's image tokens for the same scene (squared error relative to their variance), so
    that the language model trained on oracle tokens can read real images from the start of stage 2."""
    optimizer = torch.optim.AdamW(vlm.projector.parameters(), lr=cfg.vision_lr, betas=cfg.betas)
    rng = np.random.default_rng([cfg.seed, PROJECTOR_STREAM])
    log = []
    for step in tqdm(range(cfg.projector_steps), disable=not progress, dynamic_ncols=True, desc="projector warm-up"):
        if deadline is not None and time.monotonic() > deadline:
            break
        scenes, pixel_values = warm_up_scenes(rng, vlm, cfg.vision_images)
        with torch.no_grad():
            features = vlm.vision_backbone(pixel_values)  # [B, P, C]
            target = oracle(torch.from_numpy(np.stack([scene_inventory(scene) for scene in scenes])))  # [B, P, d]
        loss = ((vlm.projector(features) - target) ** 2).mean() / target.var()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        log.append({"projector_step": step + 1, "loss": round(loss.item(), 5)})
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


@contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """Inside, torch uses deterministic algorithms only (`torch.use_deterministic_algorithms`); the previous setting is
    restored after. Training needs it to be a function of the seed: on CPU the backward of advanced indexing with
    repeated indices (`index_put_` with accumulate, here `_select`'s rows that share a scene's state) adds in an order
    that depends on thread timing once a tensor is large enough to be split over threads, so at the demo model's size
    two runs of one seed drifted apart from the first step (measured: no cost in step time)."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


@deterministic_algorithms()
def train(
    cfg: TrainConfig,
    out_dir: Path | None = None,
    config: CobraConfig | None = None,
    tokenizer=None,
    progress: bool = True,
    command: str = "",
) -> TrainResult:
    """Train; with `out_dir`, save the model directory, the loss log and the run info (`command`: how it was run)
    there."""
    # The CPU kernels load (and, the first time on a machine, compile) before the clock starts: loading alone takes
    # about 2.5 s, and charged to the first step it made the pace at step 101 look about 4% slower than it was, which
    # lets the clock into the schedule of a run that keeps to its budget with less than that to spare.
    get_ops(torch.device("cpu"))
    t0 = time.monotonic()
    torch.set_num_threads(cfg.threads)
    tokenizer = tokenizer or build_demo_tokenizer()
    overrides = {k: v for k in ("d_model", "n_layer", "d_state") if (v := getattr(cfg, k)) is not None}
    config = config or demo_config(len(tokenizer), **overrides)
    tokens = TurnTokenizer(tokenizer, get_prompt_builder(config.prompt_format))
    vlm = build_model(config, cfg.seed).train()
    budget = cfg.max_minutes * 60
    reserve = 20.0  # seconds kept for saving
    deadline = t0 + budget - reserve
    vision_log = warm_up_vision(vlm, cfg, progress, deadline) if cfg.vision_steps else []
    image_size = config.vision.image_size
    stream = BatchStream(cfg.seed, tokens, vlm.image_transform, image_size, cfg)
    monitor_items = make_eval_set(MONITOR_SEED, cfg.monitor_items) if cfg.monitor_every else []
    if cfg.vision_lr_scale == 0:
        vlm.vision_backbone.requires_grad_(False)
    heads = (LookupHeads(config.llm.d_model, cfg.lookup_layer, cfg.offset_layer, cfg.verdict_layer,
                         cfg.lookup_loss_weight)
             if cfg.lookup_loss_weight else None)
    if heads and max(heads.layers) >= config.llm.n_layer:
        raise ValueError(f"the look-up heads read blocks {heads.layers}; the model has {config.llm.n_layer}")
    if cfg.oracle_steps >= cfg.steps:
        raise ValueError(f"oracle_steps ({cfg.oracle_steps}) must leave steps for real images (steps {cfg.steps})")
    oracle = OracleTokens(config.vision.num_patches, config.llm.d_model) if cfg.oracle_steps else None
    groups = param_groups(vlm, cfg.weight_decay, cfg.vision_lr_scale)
    for extra in (heads, oracle):
        if extra:
            groups.append({"params": list(extra.parameters()), "weight_decay": 0.0, "lr_scale": 1.0})
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    log_file = None
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        log_file = open(Path(out_dir) / LOG_FILE, "w")
    log: list[dict] = []
    stopped_by, ema = "steps", None
    behind = False  # projected to overrun the budget: the cosine then follows the clock
    step_seconds = 0.0  # time spent in optimizer steps (monitoring included, the projector warm-up not)
    bar = tqdm(total=cfg.steps, disable=not progress, dynamic_ncols=True, desc="train")
    train_start = time.monotonic()
    try:
        for step in range(cfg.steps):
            elapsed = time.monotonic() - t0
            if elapsed > budget - reserve:
                stopped_by = "time"
                break
            # cosine progress by step; by time only once the remaining steps, at the pace so far, would overrun the
            # budget (the schedule is then compressed to end on time). A run that keeps to its budget never lets
            # the clock into its schedule, so its weights depend on the seed alone.
            if not behind and step > cfg.warmup_steps:
                behind = elapsed + step_seconds / step * (cfg.steps - step) > budget - reserve
            step_progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
            time_progress = (elapsed - (train_start - t0)) / max(budget - reserve - (train_start - t0), 1)
            lr = lr_at(cfg, step, max(step_progress, time_progress) if behind else step_progress)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            if oracle and step == cfg.oracle_steps:  # the oracle stage ends: real images from here on
                vision_log += warm_up_projector(vlm, oracle, cfg, progress, deadline)
            step_start = time.monotonic()
            batch = next(stream)
            on_oracle = oracle if step < cfg.oracle_steps else None
            loss = batch_loss(vlm, batch, heads, on_oracle(batch.inventories) if on_oracle else None)
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
                entry["monitor"] = monitor_accuracy(vlm, monitor_items, tokens, image_size, on_oracle)
                tqdm.write(f"step {step + 1}: loss(ema) {ema:.4f} held-out teacher-forced accuracy "
                           + " ".join(f"{k} {v:.2f}" for k, v in entry["monitor"].items()), file=sys.stderr)
            log.append(entry)
            if log_file:
                log_file.write(json.dumps(entry) + "\n")
                log_file.flush()
            step_seconds += time.monotonic() - step_start
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
        save(result, cfg, tokenizer, Path(out_dir), time.monotonic() - train_start, command)
    return result


def save(result: TrainResult, cfg: TrainConfig, tokenizer, out_dir: Path, train_seconds: float, command: str) -> Path:
    """Write the model directory (fp32 safetensors) and the run info next to the loss log."""
    from cobra_app.loading import save_model_dir  # here: loading imports transformers/hub machinery

    save_model_dir(result.vlm, tokenizer, out_dir)
    losses = [e["loss"] for e in result.log]
    info = {
        "command": command,
        "train_config": cfg.to_dict(),
        "steps_done": result.steps_done,
        "stopped_by": result.stopped_by,
        "wall_seconds": round(result.wall_seconds, 1),
        "train_loop_seconds": round(train_seconds, 1),
        "parameters": sum(p.numel() for p in result.vlm.parameters()),
        "weights_bytes": (out_dir / "model.safetensors").stat().st_size,
        "vision_warm_up_loss_last_50": _mean([e["loss"] for e in result.vision_log if "vision_step" in e][-50:]),
        "projector_warm_up_loss_last_50": _mean([e["loss"] for e in result.vision_log if "projector_step" in e][-50:]),
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
    p.add_argument("--oracle-steps", type=int, default=defaults.oracle_steps,
                   help="first steps of stage 2 on perfect vision (0 = none)")
    p.add_argument("--projector-steps", type=int, default=defaults.projector_steps,
                   help="projector steps after the oracle stage")
    p.add_argument("--d-model", type=int, default=None)
    p.add_argument("--n-layer", type=int, default=None)
    p.add_argument("--d-state", type=int, default=None)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    cfg = dataclasses.replace(
        defaults, seed=args.seed, steps=args.steps, max_minutes=args.max_minutes, rows_per_batch=args.rows_per_batch,
        lr=args.lr, warmup_steps=min(args.warmup_steps, args.steps), multi_turn_prob=args.multi_turn_prob,
        threads=args.threads, monitor_every=args.monitor_every, d_model=args.d_model, n_layer=args.n_layer,
        d_state=args.d_state, vision_steps=args.vision_steps, oracle_steps=args.oracle_steps,
        projector_steps=args.projector_steps,
    )
    return args, cfg


def main(argv: Sequence[str] | None = None) -> int:
    args, cfg = parse_args(argv)
    command = "python -m cobra_app.demo.train " + " ".join(sys.argv[1:] if argv is None else argv)
    result = train(cfg, args.out, progress=not args.no_progress, command=command)
    size = (args.out / "model.safetensors").stat().st_size
    print(f"saved {args.out} after {result.steps_done} steps in {result.wall_seconds / 60:.1f} min "
          f"(stopped by {result.stopped_by}); weights {size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
