"""Spec: the shared-image, chunked forward pass gives exactly the losses of one [image + text] sequence per row, and
reads given image tokens in the model's reading order."""

import pytest
import torch
import torch.nn.functional as F

from cobra_app.demo.conversations import iter_training_examples
from cobra_app.demo.model_config import tiny_config
from cobra_app.demo.scenes import render
from cobra_app.demo.training.batching import make_batch
from cobra_app.demo.training.forward import batch_loss
from cobra_app.demo.training.lookup import LookupHeads
from cobra_app.demo.training.model_init import build_model
from cobra_app.demo.training.rendering import SceneRenderer
from cobra_app.demo.training.rows import IGNORE, encode_turns, labels_for
from tests.helpers import reading_columns


def test_shared_image_chunked_batch_equals_one_sequence_per_row(tokenizer, tokens):
    """Rows continuing from their scene's image state, in chunks, give the loss of [image + text] per row."""
    config = tiny_config(len(tokenizer))
    vlm = build_model(config, seed=0)
    examples = [ex for ex, _ in zip(iter_training_examples(3), range(4))]
    rows = [(i, turns) for i, (_, conv) in enumerate(examples) for turns in ([conv[:1]] + [conv] * (len(conv) > 1))]
    batch = make_batch([s for s, _ in examples], rows, tokens, SceneRenderer(vlm.image_transform),
                       min_chunk=4)
    assert len(batch.chunks) > 1 and batch.lengths == sorted(batch.lengths, reverse=True)
    loss = batch_loss(vlm, batch)

    total, count = 0.0, 0
    for scene_idx, turns in rows:
        ids, assistant = encode_turns(turns, tokens)
        labels = torch.tensor(labels_for(ids, assistant))
        pixels = vlm.image_transform(render(examples[scene_idx][0]))
        logits = vlm({k: v[None] for k, v in pixels.items()}, torch.tensor([ids]))[0]
        total += F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum").item()
        count += int((labels != IGNORE).sum())
    assert count == batch.num_label_tokens
    assert loss.item() == pytest.approx(total / count, rel=1e-5)  # the same sums, in another order (fp32)


def test_lookup_loss_of_a_chunked_batch_equals_one_sequence_per_row(tokenizer, tokens):
    """The auxiliary losses read the streams after their blocks at the right positions, chunked or not."""
    config = tiny_config(len(tokenizer))
    vlm = build_model(config, seed=0)
    heads = LookupHeads(config.llm.d_model, lookup_layer=0, offset_layer=1, verdict_layer=1, weight=0.5)
    examples = [ex for ex, _ in zip(iter_training_examples(3), range(6))]
    rows = [(i, conv) for i, (_, conv) in enumerate(examples)]
    batch = make_batch([s for s, _ in examples], rows, tokens, SceneRenderer(vlm.image_transform),
                         min_chunk=2)
    assert batch.lookup_mask.any(-1).sum() > 3 and batch.offset_mask[..., 2].sum() > 0 and len(batch.chunks) > 1
    assert batch.verdict_mask.sum() > batch.offset_mask[..., 2].sum()  # verdicts are carried past their statement
    auxiliary = (batch_loss(vlm, batch, heads) - batch_loss(vlm, batch)).item()

    streams = {}
    hooks = [vlm.llm.backbone.layers[layer].register_forward_hook(
        lambda m, i, out, layer=layer: streams.__setitem__(layer, out[1] + out[0].float())) for layer in (0, 1)]
    total = 0.0
    for r, row in enumerate(batch.order):
        scene_idx, turns = rows[row]
        ids, _ = encode_turns(turns, tokens)
        pixels = vlm.image_transform(render(examples[scene_idx][0]))
        vlm({k: v[None] for k, v in pixels.items()}, torch.tensor([ids]))
        text = {layer: stream[:, -len(ids):] for layer, stream in streams.items()}  # the text positions
        total += heads.loss(text, *(t[r : r + 1, : len(ids)] for t in batch.lookup_targets)).item()
    for hook in hooks:
        hook.remove()
    assert auxiliary == pytest.approx(0.5 * total / batch.num_lookup_positions, rel=1e-4)


def test_batch_loss_reads_given_image_tokens_in_place_of_the_images(tokenizer, tokens):
    config = tiny_config(len(tokenizer))
    vlm = build_model(config, seed=0)
    examples = [ex for ex, _ in zip(iter_training_examples(5), range(3))]
    batch = make_batch([s for s, _ in examples], [(i, conv) for i, (_, conv) in enumerate(examples)], tokens,
                       SceneRenderer(vlm.image_transform))
    encoded = vlm.encode_images(batch.pixel_values)
    assert batch_loss(vlm, batch, image_embeds=encoded).item() == batch_loss(vlm, batch).item()
    other = batch_loss(vlm, batch, image_embeds=torch.zeros_like(encoded)).item()
    assert other != batch_loss(vlm, batch).item()


def test_image_tokens_given_in_the_towers_patch_order_are_read_in_the_models_order(tokenizer, tokens):
    """The oracle's tokens come in the towers' (row-major) order, like the projector's output; a model that reads
    column by column reads them column by column."""
    rows = build_model(tiny_config(len(tokenizer)), seed=0)
    columns = reading_columns(rows)
    examples = [ex for ex, _ in zip(iter_training_examples(5), range(3))]
    batch = make_batch([s for s, _ in examples], [(i, conv) for i, (_, conv) in enumerate(examples)], tokens,
                       SceneRenderer(rows.image_transform), min_chunk=4)
    grid = rows.config.vision.patch_grid
    embeds = torch.randn(len(examples), grid * grid, rows.config.llm.d_model)  # [S, P, d], row-major patches
    by_columns = embeds[:, [r * grid + c for c in range(grid) for r in range(grid)]]  # (r, c) at c * grid + r
    loss = batch_loss(columns, batch, image_embeds=embeds)
    assert torch.equal(loss, batch_loss(rows, batch, image_embeds=by_columns))
    assert not torch.equal(loss, batch_loss(rows, batch, image_embeds=embeds))
