"""The one model interface the sessions use: what `cobra_app.pipeline.Cobra` offers, as a typed Protocol.

Every model call of the session layer goes through `encode_image`, `prefill` and `step` (never `cobra.vlm.llm`), so a stand-in model,
a recorder, or a model living in another process can take the model's place. States are values: no method modifies
the state it is given; each returns a new one.
"""

from __future__ import annotations

from typing import Protocol

import torch
from PIL import Image
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from cobra_app.model.cobra import CobraConfig
from cobra_app.model.mamba import MambaState
from cobra_app.prompting import TurnTokenizer


class SessionModel(Protocol):
    """A loaded Cobra as the sessions see it. Shapes: P image patches, d model width, L chunk length, V vocabulary."""

    tokenizer: PreTrainedTokenizerBase
    turns: TurnTokenizer  # per-turn ids of the model's prompt format

    @property
    def config(self) -> CobraConfig: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def vocab_size(self) -> int:
        """Tokens the tokenizer can produce (logits beyond are padding)."""
        ...

    def info(self) -> dict[str, str | int]:
        """What runs (model id, device, dtype, ops, ...); `state_bytes`: the size of one conversation state."""
        ...

    def identity(self) -> str:
        """A digest of what makes two models' states interchangeable (config, weights, dtype, ops path)."""
        ...

    def encode_image(self, image: Image.Image) -> Tensor:
        """An image -> its projected patch embeddings [1, P, d]."""
        ...

    def prefill(self, input_ids: Tensor, image_embeds: Tensor | None = None, state: MambaState | None = None,
                logits_to_keep: int = 1) -> tuple[Tensor, MambaState]:
        """Read [image patches] + input_ids [1, L] on top of `state` (None: the start) -> (logits [1, k, V] fp32 of
        the last k = logits_to_keep positions, new state)."""
        ...

    def step(self, input_ids: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        """Read one token per sequence: input_ids [B] -> (logits [B, V] fp32, new state)."""
        ...
