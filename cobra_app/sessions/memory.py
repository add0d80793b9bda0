"""A byte-budget LRU store for everything the sessions cache: state snapshots, image-prefix states, image embeddings.

Sizes are measured from the tensors themselves (`measure_nbytes`: the bytes of every distinct storage a value holds,
so a view that keeps a larger buffer alive is charged the whole buffer). `put` evicts least-recently-used entries until
the new one fits; a value larger than the whole budget is not stored at all. The accounted total therefore never
exceeds the budget. Thread-safe (one internal lock, never held while calling out).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from typing import Any

from torch import Tensor

from cobra_app.model.mamba import MambaState


def _tensors(value: Any) -> Iterable[Tensor]:
    if value is None:
        return
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, MambaState):
        for layer in value.layers:
            yield layer.conv
            yield layer.ssm
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _tensors(getattr(value, f.name))
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def measure_nbytes(value: Any) -> int:
    """Bytes of all distinct tensor storages reachable from `value` (tensors, MambaStates, dataclasses, containers)."""
    seen: dict[tuple[str, int], int] = {}
    for t in _tensors(value):
        storage = t.untyped_storage()
        seen[(str(t.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


class MemoryStore:
    """LRU map key -> value under a byte budget. Counts evictions (and puts refused for being larger than the budget)."""

    def __init__(self, budget_bytes: int):
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes}")
        self.budget_bytes = int(budget_bytes)
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0
        self.oversized = 0  # values not stored because they alone exceed the budget
        self.peak_bytes = 0

    @property
    def bytes_in_use(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get(self, key: Hashable) -> Any | None:
        """The value (marked most recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def peek(self, key: Hashable) -> Any | None:
        """The value without changing its LRU position, or None."""
        with self._lock:
            entry = self._entries.get(key)
            return None if entry is None else entry[0]

    def put(self, key: Hashable, value: Any) -> bool:
        """Store `value` (replacing any value under `key`), evicting LRU entries to fit. False if it cannot fit."""
        nbytes = measure_nbytes(value)
        with self._lock:
            self._pop(key)
            if nbytes > self.budget_bytes:
                self.oversized += 1
                return False
            while self._bytes + nbytes > self.budget_bytes:
                self._pop(next(iter(self._entries)))
                self.evictions += 1
            self._entries[key] = (value, nbytes)
            self._bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self._bytes)
            return True

    def _pop(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry[1]

    def demote(self, keys: list[Hashable]) -> None:
        """Make `keys` the next to be evicted, the first key first (keys not stored are ignored)."""
        with self._lock:
            for key in reversed(keys):
                if key in self._entries:
                    self._entries.move_to_end(key, last=False)

    def discard(self, key: Hashable) -> None:
        with self._lock:
            self._pop(key)
