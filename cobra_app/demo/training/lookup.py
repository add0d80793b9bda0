"""Stage 2's auxiliary look-up losses: what each token that names something refers to in its row's scene
(`lookup_targets`), and the linear read-outs of the residual stream that learn it (`LookupHeads`, discarded after
training)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cobra_app.demo.conversations import plural
from cobra_app.demo.scenes import COLOURS, MAX_OBJECTS, PAIRS, RELATIONS, SHAPES
from cobra_app.demo.tokenizer import RELATION_WORDS
from cobra_app.demo.training.inventory import LEFT_RANK, TOP_RANK, object_errors
from cobra_app.demo.training.rows import IGNORE
from cobra_app.prompting import TurnTokenizer

# The look-up targets at a text token, by slot (LookupHeads): for an object name (" red square", " red squares"),
# whether that object is in the scene, its centre and its places from the left and from the top; for a shape word
# (" square", " squares"), which colours that shape has in the scene; for a colour word (" red"), which shapes have
# that colour.
PRESENT, CENTRE, COLOURS_OF_SHAPE, SHAPES_OF_COLOUR = slice(0, 1), slice(1, 3), slice(3, 9), slice(9, 14)
LEFT_PLACE = slice(14, 14 + MAX_OBJECTS)
TOP_PLACE = slice(LEFT_PLACE.stop, LEFT_PLACE.stop + MAX_OBJECTS)
LOOKUP_SLOTS = TOP_PLACE.stop
assert (COLOURS_OF_SHAPE.stop - COLOURS_OF_SHAPE.start, SHAPES_OF_COLOUR.stop - SHAPES_OF_COLOUR.start) == (
    len(COLOURS), len(SHAPES)) and list(PAIRS) == [(s, c) for s in SHAPES for c in COLOURS]


@cache
def token_keys(tokens: TurnTokenizer) -> Tensor:
    """[vocab, 4] what each token names: (index in PAIRS, in SHAPES, in COLOURS, in RELATIONS), -1 where it names none
    of these. Object names (singular and plural), shape words (singular and plural), colour words and relation
    phrases (" above the", " under the") are single tokens of the demo tokenizer."""
    keys = torch.full((len(tokens.tokenizer), 4), -1, dtype=torch.long)
    entries = [(0, k, f"{colour} {name}") for k, (shape, colour) in enumerate(PAIRS) for name in (shape, plural(shape))]
    entries += [(1, k, word) for k, shape in enumerate(SHAPES) for word in (shape, plural(shape))]
    entries += [(2, k, colour) for k, colour in enumerate(COLOURS)]
    entries += [(3, list(RELATIONS).index(relation), word) for word, relation in RELATION_WORDS.items()]
    for column, k, word in entries:
        (token,) = tokens.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        keys[token, column] = k
    return keys


def lookup_targets(inventories: Tensor, row_scene: Tensor, ids: Tensor, labels: Tensor, lengths: Sequence[int],
                   tokens: TurnTokenizer) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """inventories [S, INVENTORY_ROWS, pairs] (`scene_inventory`), row_scene [R], ids and labels [R, L] -> the Batch's
    (lookup, lookup_mask, offsets, offset_mask, verdicts, verdict_mask)."""
    R, L = ids.shape
    inside = torch.arange(L) < torch.tensor(lengths)[:, None]  # [R, L]
    pair, shape, colour, relation = (k.masked_fill(~inside, -1) for k in token_keys(tokens)[ids].unbind(-1))  # [R, L]
    scene = inventories[row_scene]  # [R, INVENTORY_ROWS, pairs]
    entry = scene[torch.arange(R)[:, None], :, pair.clamp(min=0)]  # [R, L, INVENTORY_ROWS] of the named object
    named = entry[..., :3]  # [R, L, 3] (present, x, y)
    found = (pair >= 0) & (named[..., 0] > 0)  # [R, L] an object name whose object is in the scene
    grid = scene[:, 0].unflatten(-1, (len(SHAPES), len(COLOURS)))  # [R, shapes, colours] presence
    lookup = torch.zeros(R, L, LOOKUP_SLOTS)
    mask = torch.zeros(R, L, LOOKUP_SLOTS, dtype=torch.bool)
    lookup[..., :3] = named
    mask[..., PRESENT] = (pair >= 0)[..., None]
    mask[..., CENTRE] = found[..., None]
    for place, rank in ((LEFT_PLACE, LEFT_RANK), (TOP_PLACE, TOP_RANK)):
        lookup[..., place] = entry[..., rank]
        mask[..., place] = found[..., None]
    lookup[..., COLOURS_OF_SHAPE] = grid[torch.arange(R)[:, None], shape.clamp(min=0)]  # [R, L, colours]
    mask[..., COLOURS_OF_SHAPE] = (shape >= 0)[..., None]
    lookup[..., SHAPES_OF_COLOUR] = grid.transpose(1, 2)[torch.arange(R)[:, None], colour.clamp(min=0)]
    mask[..., SHAPES_OF_COLOUR] = (colour >= 0)[..., None]
    # the object named before each position: the latest object-name position strictly before it
    latest = torch.where(pair >= 0, torch.arange(L), -1).cummax(dim=1).values  # [R, L]
    before = F.pad(latest[:, :-1], (1, 0), value=-1)  # [R, L]
    previous = named.gather(1, before.clamp(min=0)[..., None].expand(-1, -1, 3))  # [R, L, 3]
    has_offset = found & (before >= 0) & (previous[..., 0] > 0)  # [R, L]
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


class LookupHeads(nn.Module):
    """Stage 2's auxiliary read-outs (discarded after training), at the tokens that name things:
    - after block `lookup_layer`, at an object name ("red square"): is it in the image, where is its centre, and its
      places from the left and from the top; at a shape word ("square"): which colours that shape has in the image;
      at a colour word: which shapes are that colour;
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
