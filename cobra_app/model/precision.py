"""How a network's large matrices are stored and multiplied: `Precision`, kept by the network (`CobraVLM.precision`)
so that the model panel, the log and the benchmark can say which and why. The choice itself is the loader's
(`cobra_app.loading.precision`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    """`weights`: the storage of the large matrices (int8: the LM's projections and head, the other matrices bf16);
    `compute`: the dtype of activations and arithmetic; `reason`: why."""

    weights: torch.dtype
    compute: torch.dtype
    reason: str = "set by the caller"

    @property
    def float_weights(self) -> torch.dtype:
        """The storage of the matrices that are not int8."""
        return torch.bfloat16 if self.weights == torch.int8 else self.weights

    @property
    def label(self) -> str:
        """E.g. "bfloat16", "bfloat16 weights, float32 compute", "int8 weights, float32 compute"."""
        weights, compute = (str(d).removeprefix("torch.") for d in (self.weights, self.compute))
        return weights if weights == compute else f"{weights} weights, {compute} compute"
