"""Stage 2's forward pass over a Batch: the image patches once per scene, then every text row continued from its
scene's recurrent state, chunk by chunk (exactly one [image + text] sequence per row), and the training loss."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from cobra_app.demo.training.batching import Batch
from cobra_app.demo.training.lookup import LookupHeads
from cobra_app.demo.training.rows import IGNORE
from cobra_app.model.cobra import CobraVLM
from cobra_app.model.mamba import LayerState, MambaState


def _select(state: MambaState, index: Tensor | slice) -> MambaState:
    """Rows of a batched state (differentiable: gradients of shared rows add up)."""
    return MambaState([LayerState(l.conv[index], l.ssm[index]) for l in state.layers], state.seqlen)


def batch_logits(vlm: CobraVLM, batch: Batch, image_embeds: Tensor | None = None
                 ) -> Iterator[tuple[int, int, Tensor, Tensor]]:
    """Run a batch: yields (start, end, targeted [active, end - start] bool, logits [n, V]) chunk by chunk, where
    `targeted` marks the chunk's positions that have a target (labels != IGNORE) and the logits are theirs, in
    row-major order: the LM head runs on those positions only (a step's other positions are five in six).

    Image patches first (once per scene; `image_embeds` [S, P, d] in place of the encoded images, e.g. the oracle
    stage's, in the towers' patch order like the projector's output), then each row's text on top of its scene's
    state, exactly as one [image + text] sequence per row would be processed."""
    if image_embeds is None and not batch.pixel_values:
        raise ValueError("this batch carries no images (an oracle-stage batch): give its image tokens")
    if image_embeds is None:
        image_embeds = vlm.encode_images(batch.pixel_values)  # [S, P, d], in the language model's reading order
    else:
        image_embeds = vlm.in_reading_order(image_embeds)
    _, state = vlm.llm(inputs_embeds=image_embeds, logits_to_keep=1)
    state = _select(state, batch.row_scene)  # [R] rows, each from its scene's state
    for start, end, active in batch.chunks:
        targeted = batch.labels[:active, start:end] != IGNORE
        logits, state = vlm.llm(batch.ids[:active, start:end], state=_select(state, slice(0, active)),
                                logits_at=targeted)
        yield start, end, targeted, logits


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
        for start, end, targeted, logits in batch_logits(vlm, batch, image_embeds):
            active = targeted.shape[0]
            total = total + F.cross_entropy(logits, batch.labels[:active, start:end][targeted], reduction="sum")
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
