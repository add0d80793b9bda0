"""The session data model: an optional image, the token history turn by turn, and where its snapshots live.

A conversation is a chain of *boundaries*; the text ids between consecutive boundaries are known exactly:

    boundary 0            start: after the image patches (or the empty state for a text-only chat)
    boundary 2i+1         before reply i: after user segment i (`Exchange.user_ids`) was read
    boundary 2i+2         after reply i: after the assistant segment (`Exchange.reply_ids`) was read

The full recompute of a conversation is `[image patches] + concat(user_ids_0, reply_ids_0, user_ids_1, ...)`.
Snapshots of boundaries are cached in the manager's `MemoryStore` under `Session.snapshot_key`; any boundary missing
there is rebuilt from the nearest earlier one that is still cached (boundary 0 from the image embeddings).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from PIL import Image
from torch import Tensor

from cobra_app.generation.decode import FinishReason
from cobra_app.model.mamba import MambaState

if TYPE_CHECKING:
    from cobra_app.sessions.reply import ReplyRun

When = Literal["before", "after"]


@dataclass(frozen=True)
class Snapshot:
    """A recurrent state at a boundary. `logits` [V] (fp32) are the next-token logits there: kept for the boundary
    before a reply (decoding starts from them), None elsewhere. `state` None means the empty state (text-only start).
    `text_tokens` counts the text ids read up to this boundary (image patches excluded)."""

    state: MambaState | None
    logits: Tensor | None = None
    text_tokens: int = 0


@dataclass(eq=False)
class Exchange:
    """A user turn and the assistant turn answering it. `user_ids` is the user segment as fed (with the turn separator
    for later turns). `reply_ids` is the assistant segment as fed: the generated ids, then EOS unless the last generated id is EOS (a reply stopped
    before its first token is written as the release writes an empty reply: " " + EOS). Empty while generating."""

    user: str
    user_ids: list[int]
    uid: int  # unique within the session: keys its snapshots
    reply: str | None = None  # decoded generated ids (None while generating)
    reply_ids: list[int] = field(default_factory=list)
    generated_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None

    @property
    def complete(self) -> bool:
        return self.reply is not None


def image_key(image: Image.Image | None) -> str | None:
    """Content hash of an image (mode, size and pixels): equal images share embeddings across sessions."""
    if image is None:
        return None
    h = hashlib.sha256()
    h.update(f"{image.mode}|{image.size[0]}x{image.size[1]}|".encode())
    h.update(image.tobytes())
    return h.hexdigest()


@dataclass(eq=False)
class Session:
    """One conversation. Mutated only under `lock`; `active` is the reply in flight (at most one)."""

    sid: str
    last_used: float
    image: Image.Image | None = None
    image_key: str | None = None
    exchanges: list[Exchange] = field(default_factory=list)
    active: ReplyRun | None = None
    closed: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _next_uid: int = 0

    def new_uid(self) -> int:
        self._next_uid += 1
        return self._next_uid

    # --- boundaries -------------------------------------------------------------------------------------------------
    @staticmethod
    def before(turn_index: int) -> int:
        return 2 * turn_index + 1

    @staticmethod
    def after(turn_index: int) -> int:
        return 2 * turn_index + 2

    def snapshot_key(self, boundary: int) -> tuple:
        """Store key of a boundary > 0 (boundary 0 is keyed by image, see the manager)."""
        turn = self.exchanges[(boundary - 1) // 2]
        return ("snapshot", self.sid, turn.uid, "before" if boundary % 2 else "after")

    def segment_ids(self, boundary: int) -> list[int]:
        """The text ids read between boundary-1 and boundary."""
        turn = self.exchanges[(boundary - 1) // 2]
        return turn.user_ids if boundary % 2 else turn.reply_ids

    def text_ids(self, upto_boundary: int | None = None) -> list[int]:
        """All text ids read up to a boundary (default: the end of the last complete turn)."""
        if upto_boundary is None:
            upto_boundary = self.after(len(self.exchanges) - 1) if self.exchanges and self.exchanges[-1].complete else (
                self.before(len(self.exchanges) - 1) if self.exchanges else 0)
        ids: list[int] = []
        for b in range(1, upto_boundary + 1):
            ids += self.segment_ids(b)
        return ids

    def history(self) -> list[tuple[str, str | None]]:
        return [(t.user, t.reply) for t in self.exchanges]
