"""How much store a conversation takes, from a model's configuration alone (no weights): the sizing table of
docs/SCALING.md. `python -m cobra_app.scale.sizing [MODEL_ID]` prints it (default cobra+3b).

A stored snapshot is a Mamba state (per layer the conv inputs [D, K] in the weight dtype and the scan state [D, N] in
fp32) plus the next-token logits [V] in fp32. A conversation resumes from one snapshot (the state after its last
reply); the store also keeps the one before that reply, which regenerate starts from. An image adds its projected
patches [P, d] (weight dtype) and the snapshot after them (no logits), shared by every conversation about it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from cobra_app.model.cobra import CobraConfig

GB = 10**9
MB = 10**6


@dataclass(frozen=True)
class StoreSizes:
    """Bytes of what the state store holds for one model at one weight dtype."""

    state: int
    logits: int
    embeds: int

    @property
    def snapshot(self) -> int:
        return self.state + self.logits

    @property
    def conversation(self) -> int:
        """The two snapshots of a conversation's last exchange (before and after the reply)."""
        return 2 * self.snapshot

    @property
    def image(self) -> int:
        """An image's patches and the state after them, shared by its conversations."""
        return self.embeds + self.state


def store_sizes(config: CobraConfig, dtype: torch.dtype) -> StoreSizes:
    llm, width = config.llm, torch.empty((), dtype=dtype).element_size()
    state = llm.n_layer * llm.d_inner * (llm.d_conv * width + llm.d_state * 4)
    return StoreSizes(state=state, logits=llm.padded_vocab_size * 4,
                      embeds=config.vision.num_patches * llm.d_model * width)


def sizing_table(config: CobraConfig, dtypes: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float32)) -> str:
    """A markdown table: bytes per snapshot, conversation and image, and conversations per GB of store."""
    header = ("| weights | state | snapshot (+ logits) | conversation (2 snapshots) | image (patches + state) "
              "| conversations per GB: resumable (1 snapshot) | ... with regenerate (2) |")
    rows = [header, "|---|---|---|---|---|---|---|"]
    for dtype in dtypes:
        s = store_sizes(config, dtype)
        rows.append(f"| {str(dtype).removeprefix('torch.')} | {s.state / MB:.1f} MB | {s.snapshot / MB:.1f} MB "
                    f"| {s.conversation / MB:.1f} MB | {s.image / MB:.1f} MB | {GB // s.snapshot} "
                    f"| {GB // s.conversation} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    from cobra_app.loading.registry import MODELS

    argv = sys.argv[1:] if argv is None else argv
    model_id = argv[0] if argv else "cobra+3b"
    if model_id not in MODELS:
        print(f"error: unknown model {model_id!r}; known: {', '.join(MODELS)}", file=sys.stderr)
        return 2
    print(f"State store sizes of {model_id} (1 MB = 10^6 bytes, 1 GB = 10^9 bytes):\n")
    print(sizing_table(MODELS[model_id].config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
