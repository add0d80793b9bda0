"""The consistent-hash ring: stable homes, few moves when replicas come and go, an even spread."""

from collections import Counter

import pytest

from cobra_app.scale.hashring import HashRing, ring_hash

KEYS = [f"conversation-{i}" for i in range(20_000)]


def homes(ring: HashRing) -> dict[str, str]:
    return {k: ring.lookup(k) for k in KEYS}


def test_the_hash_is_stable_across_processes():
    # a fixed value: Python's own hash() is salted per process and would route one conversation differently per router
    assert ring_hash("conversation-0") == 16591730814496541976  # blake2b-64 of the UTF-8 text


def test_adding_a_replica_moves_about_one_in_n_plus_one_keys_all_onto_the_new_replica():
    before = homes(HashRing(["r0", "r1", "r2", "r3"]))
    after = homes(HashRing(["r0", "r1", "r2", "r3", "r4"]))
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(after[k] == "r4" for k in moved)
    assert 0.15 < len(moved) / len(KEYS) < 0.25  # 1/5 expected


def test_removing_a_replica_moves_only_its_own_keys():
    before = homes(HashRing(["r0", "r1", "r2", "r3"]))
    after = homes(HashRing(["r0", "r1", "r3"]))
    assert all(after[k] == before[k] for k in KEYS if before[k] != "r2")
    assert all(after[k] != "r2" for k in KEYS)


def test_keys_spread_evenly_over_the_replicas():
    counts = Counter(homes(HashRing([f"r{i}" for i in range(4)])).values())
    assert set(counts) == {"r0", "r1", "r2", "r3"}
    assert max(counts.values()) / min(counts.values()) < 1.3


def test_with_nodes_reuses_an_unchanged_ring_and_an_empty_ring_refuses_lookups():
    ring = HashRing(["a", "b"])
    assert ring.with_nodes({"b": 1, "a": 2}) is ring
    assert ring.with_nodes(["a"]).lookup("x") == "a"
    with pytest.raises(LookupError):
        HashRing([]).lookup("x")
    with pytest.raises(ValueError):
        HashRing(["a"], virtual_nodes=0)
