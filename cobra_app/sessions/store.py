"""The state store: conversation states by content key (`keys.prefix_keys`), in memory and optionally on disk.

Tiers: memory first (`MemoryStore`: one byte budget, LRU, shared with the image embeddings), then the optional disk
tier (`DiskTier`: safetensors files, size-capped LRU). A state put here goes to memory at once and is queued for disk;
a disk hit is brought back into memory. `longest` finds the longest cached prefix of a request's keys, which is all a
session, a stateless API request or the terminal chat needs to resume: they prefill only what follows it.

A state is bit-exact through both tiers (tests/sessions/test_store.py).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Hashable, Sequence

from torch import Tensor

from cobra_app.sessions.disk import DiskTier
from cobra_app.sessions.memory import MemoryStore
from cobra_app.sessions.snapshot import Snapshot


class StateStore:
    """Snapshots (state + next-token logits) by content key, and image embeddings by (identity, image key)."""

    def __init__(self, memory_budget_bytes: int, disk: DiskTier | None = None):
        self.memory = MemoryStore(memory_budget_bytes)
        self.disk = disk
        self.counts: Counter[str] = Counter(memory_hits=0, disk_hits=0, lookups=0)
        self._lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def put(self, key: str, snap: Snapshot) -> None:
        """Keep `snap` (a value: never modified afterwards) under `key`, in memory and queued for disk."""
        self.memory.put(key, snap)
        if self.disk is not None:
            self.disk.put(key, snap)

    def get(self, key: str) -> Snapshot | None:
        """The snapshot under `key`: from memory, else from disk (then kept in memory too), else None."""
        snap = self.memory.get(key)
        if snap is not None:
            self._count("memory_hits")
            return snap
        if self.disk is not None and (snap := self.disk.get(key)) is not None:
            self._count("disk_hits")
            self.memory.put(key, snap)
        return snap

    def longest(self, keys: Sequence[str]) -> tuple[int, Snapshot] | None:
        """(i, snapshot) for the largest i whose key is stored in either tier, or None. A file that turns out
        unreadable is skipped (the next shorter prefix is tried)."""
        self._count("lookups")
        for i in range(len(keys) - 1, -1, -1):
            key = keys[i]
            if key in self.memory or (self.disk is not None and key in self.disk):
                snap = self.get(key)
                if snap is not None:
                    return i, snap
        return None

    def demote(self, keys: list[str]) -> None:
        """Let these states go first when memory is needed (they stay on disk)."""
        self.memory.demote(keys)

    def embeds(self, key: Hashable) -> Tensor | None:
        return self.memory.get(("embeds", key))

    def put_embeds(self, key: Hashable, embeds: Tensor) -> None:
        self.memory.put(("embeds", key), embeds)

    def flush(self) -> None:
        """Wait for queued disk writes."""
        if self.disk is not None:
            self.disk.flush()

    def stats(self) -> dict[str, int]:
        memory, disk = self.memory, self.disk
        out = {"bytes_in_use": memory.bytes_in_use, "budget_bytes": memory.budget_bytes, "evictions": memory.evictions,
               "entries": len(memory), "peak_bytes": memory.peak_bytes, "oversized": memory.oversized, **self.counts}
        if disk is not None:
            out.update(disk_entries=len(disk), disk_bytes=disk.bytes_in_use, disk_budget_bytes=disk.max_bytes,
                       disk_writes=disk.writes, disk_errors=disk.errors, disk_dropped=disk.dropped)
        return out
