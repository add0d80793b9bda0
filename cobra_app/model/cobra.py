"""Cobra's network: vision tower -> projector -> Mamba LM, with image patches placed before all text tokens.

`CobraVLM` is the `nn.Module` only: weights (under the release's state-dict names), dtype and device moves, the
forward passes. It knows no tokenizer and no prompt format, so the demo model's training and the loaders (which
build it on the meta device and fill in weights) use it alone. The object people use, with the tokenizer, the
prompt format and generation, is `cobra_app.pipeline.Cobra`, which holds one `CobraVLM` as `.vlm`.

Shapes: B batch, P image patches (729 for cobra+3b), V vision dim (2176), d = d_model (2560), L text tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from cobra_app.model.mamba import MambaConfig, MambaLM, MambaState
from cobra_app.model.precision import Precision
from cobra_app.model.projector import build_projector
from cobra_app.model.stored_linear import cast_module
from cobra_app.model.vision import VisionBackboneConfig, build_vision_backbone

CONFIG_FORMAT = "cobra-chat-model/1"


def _rows(image_tokens: Tensor, grid: int) -> Tensor:
    return image_tokens  # the towers' own order


def _columns(image_tokens: Tensor, grid: int) -> Tensor:
    # [B, grid (rows), grid (columns), d] -> columns first: the patch of row r, column c read at c * grid + r
    return image_tokens.unflatten(1, (grid, grid)).transpose(1, 2).flatten(1, 2)


# The order the language model reads a square grid of patch tokens in: (tokens [B, grid², d] in the towers' row-major
# order, grid) -> the same tokens in that order. The release reads them row by row; the demo model may read them
# column by column, so that objects in different columns arrive left to right (docs/DEMO_MODEL.md, session 20).
IMAGE_TOKEN_ORDERS = {"rows": _rows, "columns": _columns}


@dataclass
class CobraConfig:
    """Everything needed to build a Cobra model (the release's `config.json` fields plus explicit part configs)."""

    model_id: str
    arch_specifier: str  # projector, e.g. "no-align+fused-gelu-mlp"
    vision: VisionBackboneConfig
    llm: MambaConfig
    llm_backbone_id: str = "mamba-2.8b-zephyr"
    llm_max_length: int = 2048
    prompt_format: str = "zephyr"  # prompt builder registry id
    image_token_order: str = "rows"  # IMAGE_TOKEN_ORDERS id: the release's is "rows"

    def __post_init__(self) -> None:
        if self.image_token_order not in IMAGE_TOKEN_ORDERS:
            raise ValueError(f"unknown image_token_order {self.image_token_order!r}; "
                             f"expected one of {sorted(IMAGE_TOKEN_ORDERS)}")

    @property
    def vision_backbone_id(self) -> str:
        return self.vision.backbone_id

    @property
    def image_resize_strategy(self) -> str:
        return self.vision.image_resize_strategy

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CONFIG_FORMAT,
            "model_id": self.model_id,
            "arch_specifier": self.arch_specifier,
            "vision": self.vision.to_dict(),
            "llm": self.llm.to_dict(),
            "llm_backbone_id": self.llm_backbone_id,
            "llm_max_length": self.llm_max_length,
            "prompt_format": self.prompt_format,
            "image_token_order": self.image_token_order,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CobraConfig":
        if d.get("format") != CONFIG_FORMAT:
            raise ValueError(f"not a Cobra Chat model config (format {d.get('format')!r}, expected {CONFIG_FORMAT!r})")
        fields = {k: v for k, v in d.items() if k not in ("format", "vision", "llm")}
        return cls(vision=VisionBackboneConfig.from_dict(d["vision"]), llm=MambaConfig(**d["llm"]), **fields)

    def with_resize_strategy(self, strategy: str) -> "CobraConfig":
        return dataclasses.replace(self, vision=dataclasses.replace(self.vision, image_resize_strategy=strategy))


class CobraVLM(nn.Module):
    """The Cobra vision-language model. Attribute names give the release's state-dict prefixes:
    `vision_backbone.*`, `projector.projector.*` and `llm.backbone.*` / `llm.lm_head.*`."""

    def __init__(self, config: CobraConfig):
        super().__init__()
        self.config = config
        self.vision_backbone = build_vision_backbone(config.vision)
        self.projector = build_projector(config.arch_specifier, config.vision.embed_dim, config.llm.d_model)
        self.llm = MambaLM(config.llm)
        self.precision = Precision(torch.float32, torch.float32, "as built")  # how the weights are stored and used

    @property
    def dtype(self) -> torch.dtype:
        """The large float matrices' storage dtype."""
        return self.llm.dtype

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of activations and of the large matrices' arithmetic."""
        return self.llm.compute_dtype

    @property
    def device(self) -> torch.device:
        return self.llm.device

    @property
    def image_transform(self):
        """PIL image -> pixel_values dict (one [3, S, S] tensor per vision branch)."""
        return self.vision_backbone.image_transform

    def cast(self, dtype: torch.dtype, compute_dtype: torch.dtype | None = None) -> "CobraVLM":
        """Store the large matrices of vision, projector and LM in `dtype` and compute in `compute_dtype` (default
        `dtype`; e.g. bf16 weights with fp32 arithmetic). LM norms and scan parameters stay fp32."""
        compute = compute_dtype or dtype
        cast_module(self.vision_backbone, dtype, compute)
        cast_module(self.projector, dtype, compute)
        self.llm.cast(dtype, compute)
        self.precision = Precision(dtype, compute)
        return self

    def encode_images(self, pixel_values: dict[str, Tensor]) -> Tensor:
        """pixel_values {branch: [B, 3, S, S]} -> projected patch embeddings [B, P, d] in the compute dtype, in the
        order the language model reads them."""
        param = next(self.vision_backbone.parameters())
        pixels = {k: v.to(device=param.device, dtype=self.compute_dtype) for k, v in pixel_values.items()}
        return self.in_reading_order(self.projector(self.vision_backbone(pixels)).to(self.compute_dtype))

    def in_reading_order(self, image_tokens: Tensor) -> Tensor:
        """[B, P, d] in the towers' row-major patch order -> in the order the language model reads them
        (`config.image_token_order`)."""
        return IMAGE_TOKEN_ORDERS[self.config.image_token_order](image_tokens, self.config.vision.patch_grid)

    def prefill(
        self,
        input_ids: Tensor,
        image_embeds: Tensor | None = None,
        state: MambaState | None = None,
        logits_to_keep: int = 1,
    ) -> tuple[Tensor, MambaState]:
        """Read [image patches] + text on top of `state`: input_ids [B, L], image_embeds [B, P, d] or None.

        Returns (logits [B, logits_to_keep, vocab] fp32, new state).
        """
        embeds = self.llm.embed(input_ids)  # [B, L, d]
        if image_embeds is not None:
            embeds = torch.cat([image_embeds.to(embeds.dtype), embeds], dim=1)  # [B, P + L, d]
        return self.llm(inputs_embeds=embeds, state=state, logits_to_keep=logits_to_keep)

    def forward(self, pixel_values: dict[str, Tensor], input_ids: Tensor) -> Tensor:
        """Training pass from a zero state: logits for the text positions [B, L, vocab] (image patches first)."""
        logits, _ = self.prefill(input_ids, self.encode_images(pixel_values), logits_to_keep=input_ids.shape[1])
        return logits
