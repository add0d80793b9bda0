"""The state store of the sessions: image embeddings, image-prefix states and turn-boundary snapshots in one byte
budget (`MemoryStore`, LRU across sessions), and the model reads that fill it.

A missing boundary is rebuilt from the nearest earlier one still cached and the session's token history (boundary 0
from the image embeddings, re-encoding the image if they are gone too): eviction loses nothing.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor

from cobra_app.model.mamba import MambaState
from cobra_app.sessions.memory import MemoryStore
from cobra_app.sessions.protocol import SessionModel
from cobra_app.sessions.session import Session, Snapshot

COUNTERS = ("hits", "misses", "rebuilds", "rebuilt_tokens", "image_encodes", "image_hits")


class StateStore:
    """Cached states of every session over one model. Model calls are serialised by `model_lock`.

    Counters (`counters`): hits/misses of the state a turn starts from, rebuilds and the tokens they re-read,
    image encodes and embedding hits.
    """

    def __init__(self, model: SessionModel, budget_bytes: int, model_lock: threading.RLock):
        self.model, self.model_lock = model, model_lock
        self.memory = MemoryStore(budget_bytes)
        self.counters: Counter[str] = Counter({k: 0 for k in COUNTERS})
        self._counter_lock = threading.Lock()

    def count(self, **deltas: int) -> None:
        with self._counter_lock:
            self.counters.update(deltas)

    def read(self, ids: Sequence[int], state: MambaState | None, keep_logits: bool = True) -> tuple[Tensor | None,
                                                                                                     MambaState]:
        """Prefill `ids` on top of `state` -> (next-token logits [V] or None, new state), both owning their memory."""
        with self.model_lock, torch.no_grad():
            logits, new = self.model.prefill(torch.tensor([list(ids)], dtype=torch.long, device=self.model.device),
                                             None, state, logits_to_keep=1)
        return (logits[0, -1].clone() if keep_logits else None), new.clone()

    def embeds(self, s: Session) -> Tensor:
        """The session image's projected patch embeddings [1, P, d]: cached by content, encoded at most once while
        cached (concurrent requests for one image wait for a single encode)."""
        key = ("embeds", s.image_key)
        embeds = self.memory.get(key)
        if embeds is None:
            with self.model_lock:
                embeds = self.memory.get(key)
                if embeds is None:
                    embeds = self.model.encode_image(s.image).detach().clone()
                    self.count(image_encodes=1)
                    self.memory.put(key, embeds)
                    return embeds
        self.count(image_hits=1)
        return embeds

    def start_snapshot(self, s: Session) -> tuple[Snapshot, int]:
        """Boundary 0: the state after the image patches (cached per image, shared), or the empty state.
        Returns (snapshot, tokens read to compute it)."""
        if s.image_key is None:
            return Snapshot(None, None, 0), 0
        key = ("prefix", s.image_key)
        snap = self.memory.get(key)
        if snap is not None:
            return snap, 0
        with self.model_lock:
            snap = self.memory.get(key)
            if snap is not None:
                return snap, 0
            embeds = self.embeds(s)
            with torch.no_grad():
                _, state = self.model.prefill(embeds.new_zeros((1, 0), dtype=torch.long), embeds, None)
            snap = Snapshot(state.clone(), None, 0)
            self.memory.put(key, snap)
            return snap, int(embeds.shape[1])

    def resolve(self, s: Session, boundary: int) -> tuple[Snapshot, int, bool]:
        """Under s.lock: the snapshot at `boundary` -> (snapshot, tokens re-read, cache hit). A missing snapshot is
        rebuilt from the nearest earlier cached boundary and the token history, then cached."""
        if boundary == 0:
            snap, rebuilt = self.start_snapshot(s)
            self.count(hits=int(rebuilt == 0), misses=int(rebuilt > 0), rebuilds=int(rebuilt > 0),
                       rebuilt_tokens=rebuilt)
            return snap, rebuilt, rebuilt == 0
        key = s.snapshot_key(boundary)
        snap = self.memory.get(key)
        if snap is not None:
            self.count(hits=1)
            return snap, 0, True
        j, base = boundary - 1, None
        while j > 0 and (base := self.memory.peek(s.snapshot_key(j))) is None:
            j -= 1
        rebuilt = 0
        if j == 0:
            base, rebuilt = self.start_snapshot(s)
        ids = [i for b in range(j + 1, boundary + 1) for i in s.segment_ids(b)]
        logits, state = self.read(ids, base.state, keep_logits=bool(boundary % 2))
        snap = Snapshot(state, logits, base.text_tokens + len(ids))
        self.memory.put(key, snap)
        self.count(misses=1, rebuilds=1, rebuilt_tokens=rebuilt + len(ids))
        return snap, rebuilt + len(ids), False
