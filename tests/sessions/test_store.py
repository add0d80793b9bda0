"""The state store: content keys, the memory and disk tiers, bit-exact round trips, and files that go bad."""

import logging
import os
import time

import pytest
import torch

from cobra_app.model.mamba import LayerState, MambaState
from cobra_app.sessions import Snapshot, prefix_keys
from cobra_app.sessions.disk import DiskTier, encode_snapshot
from cobra_app.sessions.store import StateStore


def random_snapshot(seed: int, layers: int = 3, d_inner: int = 24, vocab: int = 50, dtype=torch.bfloat16):
    """A state with a weight-dtype conv part and an fp32 scan part, and its logits, all random."""
    g = torch.Generator().manual_seed(seed)
    state = MambaState([LayerState(torch.randn(1, d_inner, 4, generator=g).to(dtype),
                                   torch.randn(1, d_inner, 8, generator=g)) for _ in range(layers)], seqlen=40 + seed)
    return Snapshot(state, torch.randn(vocab, generator=g), text_tokens=seed)


def assert_bit_exact(a: Snapshot, b: Snapshot) -> None:
    assert a.state.seqlen == b.state.seqlen and a.text_tokens == b.text_tokens
    pairs = [(a.logits, b.logits)] + [(x, y) for la, lb in zip(a.state.layers, b.state.layers, strict=True)
                                      for x, y in ((la.conv, lb.conv), (la.ssm, lb.ssm))]
    for x, y in pairs:
        assert x.dtype == y.dtype and x.shape == y.shape
        assert torch.equal(x.view(torch.uint8) if x.dtype == torch.bfloat16 else x,
                           y.view(torch.uint8) if y.dtype == torch.bfloat16 else y)


def test_a_key_is_the_content_read_so_far():
    keys = prefix_keys("model", "img", [5, 6, 7])
    assert len(keys) == 4 and len(set(keys)) == 4 and all(len(k) == 32 for k in keys)
    assert prefix_keys("model", "img", [5, 6]) == keys[:3]  # a prefix's key does not depend on what follows
    assert prefix_keys("model", "img", [])[0] == keys[0]
    for other in (prefix_keys("other model", "img", [5, 6, 7]), prefix_keys("model", "other", [5, 6, 7]),
                  prefix_keys("model", None, [5, 6, 7]), prefix_keys("model", "img", [5, 6, 8])):
        assert other[-1] != keys[-1]
    assert prefix_keys("model", "img", [256])[-1] != prefix_keys("model", "img", [1, 0])[-1]  # ids are 4 bytes each


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_a_state_is_bit_exact_through_the_disk_tier(tmp_path, dtype):
    snap = random_snapshot(1, dtype=dtype)
    disk = DiskTier(tmp_path, 10**7)
    disk.put("a" * 32, snap)
    disk.flush()
    assert_bit_exact(DiskTier(tmp_path, 10**7).get("a" * 32), snap)  # another process's view of the folder
    assert disk.writes == 1 and disk.errors == 0


def test_the_store_finds_the_longest_prefix_in_either_tier_and_brings_disk_hits_back(tmp_path):
    keys = prefix_keys("model", None, range(10))
    store = StateStore(10**7, DiskTier(tmp_path, 10**7))
    store.put(keys[3], random_snapshot(3))
    store.put(keys[6], random_snapshot(6))
    store.flush()
    fresh = StateStore(10**7, DiskTier(tmp_path, 10**7))  # empty memory: the disk tier answers
    fresh.put(keys[4], random_snapshot(4))  # a shorter prefix in memory does not win over a longer one on disk
    pos, snap = fresh.longest(keys)
    assert pos == 6
    assert_bit_exact(snap, random_snapshot(6))
    assert keys[6] in fresh.memory and fresh.stats()["disk_hits"] == 1
    assert fresh.longest(keys[:4])[0] == 3
    assert StateStore(10**7).longest(keys) is None


def test_corrupt_truncated_and_foreign_files_are_logged_misses(tmp_path, caplog):
    disk = DiskTier(tmp_path, 10**7)
    names = {"flipped": "1" * 32, "truncated": "2" * 32, "garbage": "3" * 32, "renamed": "4" * 32, "ok": "5" * 32}
    for i, key in enumerate(names.values()):
        disk.put(key, random_snapshot(i))
    disk.flush()
    flipped = bytearray(disk.path(names["flipped"]).read_bytes())
    flipped[-5] ^= 0x01  # one bit of the tensors
    disk.path(names["flipped"]).write_bytes(bytes(flipped))
    data = disk.path(names["truncated"]).read_bytes()
    disk.path(names["truncated"]).write_bytes(data[: len(data) // 2])
    disk.path(names["garbage"]).write_bytes(b"\x00" * 100)
    os.replace(disk.path(names["ok"]), disk.path(names["renamed"]))  # a file under another key's name
    disk.path(names["ok"]).write_bytes(disk.path(names["renamed"]).read_bytes())
    fresh = DiskTier(tmp_path, 10**7)
    with caplog.at_level(logging.WARNING, logger="cobra_app.sessions.disk"):
        for name in ("flipped", "truncated", "garbage", "renamed"):
            assert fresh.get(names[name]) is None, name
            assert not fresh.path(names[name]).exists() and names[name] not in fresh
    assert fresh.errors == 4 and len([r for r in caplog.records if "treated as a miss" in r.message]) == 4
    assert_bit_exact(fresh.get(names["ok"]), random_snapshot(4))
    fresh.path(names["ok"]).unlink()  # removed by another process: a plain miss
    assert fresh.get(names["ok"]) is None and fresh.errors == 4


def test_the_disk_tier_keeps_its_size_cap_least_recently_used_out(tmp_path):
    one = len(encode_snapshot("k" * 32, random_snapshot(0)))
    disk = DiskTier(tmp_path, 3 * one + 10)
    for i in range(3):
        disk.put(f"{i}" * 32, random_snapshot(0))
        disk.flush()
        time.sleep(0.01)  # distinct mtimes: the order survives a rescan
    assert disk.get("0" * 32) is not None  # 0 is now the most recently used
    disk.put("3" * 32, random_snapshot(0))
    disk.flush()
    assert "1" * 32 not in disk and not disk.path("1" * 32).exists()  # the least recently used went
    assert {k for k in ("0", "2", "3") if k * 32 in DiskTier(tmp_path, 3 * one + 10)} == {"0", "2", "3"}
    assert disk.bytes_in_use <= 3 * one + 10


def test_temporary_files_of_a_crashed_writer_are_cleaned_up(tmp_path):
    disk = DiskTier(tmp_path, 10**7)
    disk.put("a" * 32, random_snapshot(0))
    disk.flush()
    stale = disk.path("b" * 32).with_name("b" * 32 + ".safetensors.99.1.tmp")
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"half a file")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    fresh_temp = disk.path("a" * 32).with_name("a" * 32 + ".safetensors.98.1.tmp")
    fresh_temp.write_bytes(b"being written right now")
    rescanned = DiskTier(tmp_path, 10**7)
    assert not stale.exists() and fresh_temp.exists()  # another process may still be writing that one
    assert len(rescanned) == 1 and "b" * 32 not in rescanned


def test_a_disk_that_cannot_be_written_is_logged_not_raised(tmp_path, caplog):
    disk = DiskTier(tmp_path / "states", 10**7)
    (tmp_path / "states" / ("a" * 2)).write_text("a file where a folder should be")
    with caplog.at_level(logging.WARNING, logger="cobra_app.sessions.disk"):
        disk.put("a" * 32, random_snapshot(0))
        disk.flush()
    assert disk.errors == 1 and "a" * 32 not in disk and "could not write" in caplog.text
