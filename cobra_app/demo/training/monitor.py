"""The accuracy printed during training: teacher-forced exact match on held-out items, per question kind."""

from __future__ import annotations

import dataclasses

import torch

from cobra_app.demo.conversations import QA, make_eval_set
from cobra_app.demo.phrasing import TRAINING
from cobra_app.demo.scenes import Scene
from cobra_app.demo.training.batching import make_batch
from cobra_app.demo.training.forward import batch_logits
from cobra_app.demo.training.oracle import OracleTokens
from cobra_app.demo.training.rendering import SceneRenderer
from cobra_app.model.cobra import CobraVLM
from cobra_app.prompting import TurnTokenizer

MONITOR_SEED = 777  # held-out scenes for the accuracy printed during training (not the reported evaluation)
MONITOR_PHRASING = dataclasses.replace(TRAINING, original_share=0.0)  # training's wording and looks, on other scenes


def monitor_items(n: int) -> list[tuple[Scene, QA]]:
    """`n` held-out items drawn like training's (grammar wording with its surface variation, absent objects, the
    "train" rendering family), from another seed stream: the monitor never reads a held-out template or family."""
    return make_eval_set(MONITOR_SEED, n, phrasing=MONITOR_PHRASING, rendering="train")


@torch.no_grad()
def monitor_accuracy(vlm: CobraVLM, items, tokens: TurnTokenizer, oracle: OracleTokens | None = None,
                     batch_rows: int = 60) -> dict:
    """Teacher-forced exact match on single-turn held-out items: a reply is right when the arg-max at every reply
    position (its EOS included) is the reference token, i.e. when greedy decoding reproduces it. Per kind (questions
    about absent objects apart). With `oracle`, the images are read through its tokens (the oracle stage)."""
    was_training = vlm.training
    vlm.eval()
    hits: dict[str, list[bool]] = {}
    render_scenes = SceneRenderer(vlm.image_transform)
    for i in range(0, len(items), batch_rows):
        chunk = items[i : i + batch_rows]
        batch = make_batch([s for s, _ in chunk], [(j, [qa]) for j, (_, qa) in enumerate(chunk)], tokens,
                           render_scenes, min_chunk=1)
        ok = torch.ones(len(chunk), dtype=torch.bool)
        for start, end, targeted, logits in batch_logits(vlm, batch, oracle(batch.scenes) if oracle else None):
            labels = batch.labels[: targeted.shape[0], start:end][targeted]  # [n] the targeted positions' tokens
            row_of = targeted.nonzero()[:, 0]  # [n]
            ok[row_of[logits.argmax(-1) != labels]] = False
        for r, j in enumerate(batch.order):
            qa = chunk[j][1]
            hits.setdefault("absent" if "absent" in qa.tags else qa.kind, []).append(bool(ok[r]))
    vlm.train(was_training)
    return {kind: sum(v) / len(v) for kind, v in sorted(hits.items())}
