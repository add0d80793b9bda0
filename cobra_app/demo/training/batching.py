"""Training batches: the scenes of a step and the text rows that continue from their image state, sorted by length and
cut into chunks fed only to the rows still running (a Mamba continues exactly from a state, so this is exact: right
padding only follows a row's last token, and padded positions carry no loss)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cobra_app.demo.conversations import QA, iter_training_examples
from cobra_app.demo.scenes import Scene
from cobra_app.demo.training.config import TrainConfig
from cobra_app.demo.training.inventory import scene_inventory
from cobra_app.demo.training.lookup import lookup_targets
from cobra_app.demo.training.rendering import RenderScenes
from cobra_app.demo.training.rows import IGNORE, encode_turns, labels_for, rows_for_conversation
from cobra_app.prompting import TurnTokenizer


@dataclass
class Batch:
    """Scenes (pixels) and the text rows that continue from their image state, sorted by length (longest first)."""

    scenes: list[Scene]  # S scenes (what the oracle stage's image tokens are made from)
    pixel_values: dict[str, Tensor]  # {branch: [S, 3, H, W]}; empty when the batch is read with given image tokens
    inventories: Tensor  # [S, rows, pairs] each scene's `scene_inventory` (what the look-up targets are read from)
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


def make_batch(
    scenes: Sequence[Scene],
    rows: Sequence[tuple[int, list[QA]]],
    tokens: TurnTokenizer,
    render_scenes: RenderScenes | None,
    min_chunk: int = 8,
    pad_id: int | None = None,
) -> Batch:
    """scenes + rows (scene index, turns) -> a Batch. `render_scenes` (a `SceneRenderer`) gives the scenes' pixel
    values, rendered and transformed exactly as at inference; with None they are not rendered (no pixel values)."""
    pixel_values = render_scenes(scenes) if render_scenes else {}
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
    inventories = torch.from_numpy(np.stack([scene_inventory(scene) for scene in scenes]))  # [S, rows, pairs]
    return Batch(list(scenes), pixel_values, inventories, row_scene, ids, labels, lengths,
                 chunk_plan(lengths, min_chunk), order,
                 *lookup_targets(inventories, row_scene, ids, labels, lengths, tokens))


class BatchStream:
    """Endless deterministic stream of training batches from `iter_training_examples(seed)`, the kinds of question
    mixed as `cfg.kind_weights` says. The first `cfg.oracle_steps` batches carry no pixel values: the oracle stage
    reads `OracleTokens` in place of the images, so rendering them would only cost time (about 0.04 s a step)."""

    def __init__(self, seed: int, tokens: TurnTokenizer, render_scenes: RenderScenes, cfg: TrainConfig):
        self.examples = iter_training_examples(seed, kind_weights=cfg.kind_weights)
        self.rng = np.random.default_rng([seed, 1])  # row-format choices
        self.tokens, self.render_scenes, self.cfg = tokens, render_scenes, cfg
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
        render_scenes = self.render_scenes if self.served >= self.cfg.oracle_steps else None
        self.served += 1
        return make_batch(scenes, rows, self.tokens, render_scenes, self.cfg.min_chunk)
