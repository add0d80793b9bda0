"""Spec: batches are cut into chunks fed to the running rows only; the oracle stage's batches carry no pixels and are
otherwise the stream's; the stream asks the question kinds its config weighs."""

import dataclasses

import pytest
import torch

from cobra_app.demo.conversations import NUMBERS
from cobra_app.demo.model_config import tiny_config
from cobra_app.demo.training.batching import BatchStream, chunk_plan
from cobra_app.demo.training.config import TrainConfig
from cobra_app.demo.training.forward import batch_logits
from cobra_app.demo.training.model_init import build_model
from cobra_app.demo.training.rendering import SceneRenderer
from cobra_app.demo.training.rows import IGNORE


def test_chunk_plan_covers_every_row_and_only_running_rows():
    lengths = [40, 33, 20, 20, 18, 3]
    plan = chunk_plan(lengths, min_chunk=8)
    assert plan[0][0] == 0 and plan[-1][1] == 40
    assert all(a[1] == b[0] for a, b in zip(plan, plan[1:]))  # contiguous
    for start, end, active in plan:
        assert active == sum(n > start for n in lengths)
        assert end - start >= 8 or end == 40


def test_oracle_stage_batches_are_not_rendered_and_the_stream_is_otherwise_the_same(tokenizer, tokens):
    """The oracle stage reads OracleTokens in place of the images, so its batches carry no pixels; the text, the
    scenes and the later batches' images are those of a stream without an oracle stage."""
    config = tiny_config(len(tokenizer))
    vlm = build_model(config, seed=0)
    cfg = TrainConfig(rows_per_batch=6, oracle_steps=2)
    render_scenes = SceneRenderer(vlm.image_transform)
    oracle_first = BatchStream(0, tokens, render_scenes, cfg)
    plain = BatchStream(0, tokens, render_scenes, dataclasses.replace(cfg, oracle_steps=0))
    batches = [(next(oracle_first), next(plain)) for _ in range(3)]
    for step, (batch, reference) in enumerate(batches):
        assert torch.equal(batch.ids, reference.ids) and torch.equal(batch.inventories, reference.inventories)
        assert batch.scenes == reference.scenes and len(batch.scenes) == len(batch.inventories)
        assert (batch.pixel_values == {}) == (step < 2)
    assert all(torch.equal(batches[2][0].pixel_values[k], v) for k, v in batches[2][1].pixel_values.items())
    with pytest.raises(ValueError, match="no images"):
        next(batch_logits(vlm, batches[0][0]))


def test_the_stream_asks_the_question_kinds_its_config_weighs(tokenizer, tokens):
    render_scenes = SceneRenderer(build_model(tiny_config(len(tokenizer)), seed=0).image_transform)

    def reply_words(kind_weights):
        cfg = TrainConfig(rows_per_batch=12, oracle_steps=1, kind_weights=kind_weights)  # oracle step: no rendering
        batch = next(BatchStream(0, tokens, render_scenes, cfg))
        targets = batch.labels[batch.labels != IGNORE].tolist()  # the reply tokens
        return {tokenizer.decode([t], skip_special_tokens=True).strip(" .").lower() for t in targets} - {""}

    assert reply_words({"count": 1.0}) <= set(NUMBERS)
    assert {"yes", "no"} & reply_words(TrainConfig().kind_weights)
