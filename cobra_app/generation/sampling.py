"""Next-token selection: greedy or seeded sampling with transformers' logits processors.

Order as in the release's sampler (mamba_ssm): repetition penalty, top-k, temperature, top-p. Greedy decoding applies
only the repetition penalty (the warpers never change the arg-max).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings. Neutral values switch a feature off: top_k=0, top_p=1.0, temperature=1.0,
    repetition_penalty=1.0, stop=(). A top_k above the vocabulary size means the whole vocabulary. `seed=None`: a
    random seed. `stop`: strings that end the reply (the reply's text ends just before the first one; see
    `Decoder`). Validated on construction (ValueError)."""

    max_new_tokens: int = 256
    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError for settings that make no sense."""
        rules = [
            ("max_new_tokens", _is_int(self.max_new_tokens) and self.max_new_tokens >= 1, "an integer >= 1"),
            ("greedy", isinstance(self.greedy, bool), "a bool"),
            ("temperature", _is_real(self.temperature) and self.temperature > 0,
             "a finite number > 0 (greedy=True gives deterministic output)"),
            ("top_k", _is_int(self.top_k) and self.top_k >= 0, "an integer >= 0 (0 = off)"),
            ("top_p", _is_real(self.top_p) and 0 < self.top_p <= 1, "a number in (0, 1] (1 = off)"),
            ("repetition_penalty", _is_real(self.repetition_penalty) and self.repetition_penalty > 0,
             "a finite number > 0 (1 = off)"),
            ("seed", self.seed is None or (_is_int(self.seed) and 0 <= self.seed < 2**64),
             "None or an integer in [0, 2**64)"),
            ("stop", isinstance(self.stop, tuple) and all(isinstance(s, str) and s for s in self.stop),
             "a tuple of non-empty strings"),
        ]
        for name, ok, rule in rules:
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")


def build_logits_processor(params: SamplingParams) -> LogitsProcessorList:
    """The processors `params` switches on, in the release's order."""
    processors = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(float(params.repetition_penalty)))
    if not params.greedy:
        if params.top_k > 0:
            processors.append(TopKLogitsWarper(int(params.top_k)))
        if params.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(float(params.temperature)))
        if params.top_p < 1.0:
            processors.append(TopPLogitsWarper(float(params.top_p)))
    return processors


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on `device` seeded with `seed` (a fresh random seed when None)."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


def next_token(
    logits: Tensor, history_ids: Tensor, params: SamplingParams, generator: torch.Generator | None = None
) -> Tensor:
    """logits [B, V], history_ids [B, T] (prompt and generated ids, for the repetition penalty) -> next ids [B].

    Greedy: arg-max. Sampling: a draw from the processed distribution with `generator` (same device as logits).
    """
    scores = build_logits_processor(params)(history_ids, logits.float())
    if params.greedy:
        return scores.argmax(dim=-1)
    return torch.multinomial(scores.softmax(dim=-1), num_samples=1, generator=generator).squeeze(-1)
