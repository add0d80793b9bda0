"""Consistent hashing: which replica is a conversation's home when nothing better is known.

Each replica owns `virtual_nodes` points on a 64-bit ring (hashes of "replica#i"); a key belongs to the first point
clockwise from its own hash. Adding a replica to N moves only the keys that the new replica's points capture (about
1/(N+1) of them, all onto the new replica); removing one moves only its own keys. Pure Python, no Ray: the router
uses it and the tests check those properties directly.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable

DEFAULT_VIRTUAL_NODES = 128


def ring_hash(text: str) -> int:
    """A stable 64-bit hash (the same in every process, unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing:
    """An immutable ring over a set of node names. `lookup(key)` -> the owning node."""

    def __init__(self, nodes: Iterable[str], virtual_nodes: int = DEFAULT_VIRTUAL_NODES):
        if virtual_nodes < 1:
            raise ValueError(f"virtual_nodes must be >= 1, got {virtual_nodes}")
        self.nodes = frozenset(nodes)
        self.virtual_nodes = virtual_nodes
        points = sorted((ring_hash(f"{node}#{i}"), node) for node in self.nodes for i in range(virtual_nodes))
        self._hashes = [h for h, _ in points]
        self._owners = [node for _, node in points]

    def lookup(self, key: str) -> str:
        """The node owning `key`. Raises LookupError on an empty ring."""
        if not self._hashes:
            raise LookupError("the ring has no nodes")
        i = bisect.bisect_right(self._hashes, ring_hash(key))
        return self._owners[i % len(self._owners)]

    def with_nodes(self, nodes: Iterable[str]) -> HashRing:
        """This ring if it already holds exactly `nodes`, else a new ring over them."""
        nodes = frozenset(nodes)
        return self if nodes == self.nodes else HashRing(nodes, self.virtual_nodes)
