"""A point in a conversation the sessions can resume from: the recurrent state and the logits there."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from cobra_app.model.mamba import MambaState


@dataclass(frozen=True)
class Snapshot:
    """A recurrent state and the next-token logits [V] (fp32) there. `state` None: the empty state (the start of a
    text-only conversation, whose logits are None). `text_tokens`: text ids read up to here (patches excluded)."""

    state: MambaState | None
    logits: Tensor | None = None
    text_tokens: int = 0
