"""The disk tier of the state store: conversation states as safetensors files, size-capped, least recently used out.

    <dir>/<key[:2]>/<key>.safetensors     tensors layers.{i}.conv [1, D, K], layers.{i}.ssm [1, D, N] fp32,
                                          logits [V] fp32; metadata: format, key, seqlen, text_tokens, crc32

Writes happen on one background thread (a reply never waits for the disk): serialize, write to a temporary file in
the same folder, fsync, then `os.replace` onto the final name, so a reader sees a whole file or none. A file that is
truncated, corrupt (the CRC-32 of its tensor bytes disagrees), of another format, or unreadable is a miss: logged,
removed, never an exception. Sizes are capped at `max_bytes`: after each write the least recently used files go (use
= a write or a hit; hits touch the file's mtime, so the order survives restarts).

Several processes may share one folder (a restart, replicas): each indexes the files present when it started plus
those it writes; `rescan()` picks up the others'. A file another process removed is a plain miss.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import zlib
from collections import OrderedDict
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor

from cobra_app.model.mamba import LayerState, MambaState
from cobra_app.sessions.snapshot import Snapshot

log = logging.getLogger(__name__)

FILE_FORMAT = "cobra-chat-state/1"
SUFFIX = ".safetensors"
STALE_TEMP_S = 3600.0  # temporary files older than this are leftovers of a crashed writer
MAX_PENDING_BYTES = 2 << 30  # writes queued beyond this are dropped (the disk tier is a cache)


class CorruptStateFile(ValueError):
    pass


def _crc32(tensors: dict[str, Tensor]) -> int:
    crc = 0
    for name in sorted(tensors):
        crc = zlib.crc32(tensors[name].contiguous().view(torch.uint8).numpy(), crc)
    return crc


def encode_snapshot(key: str, snap: Snapshot) -> bytes:
    """A snapshot (state and logits, any device) -> the bytes of its safetensors file."""
    tensors = {"logits": snap.logits.detach().to("cpu", torch.float32).contiguous()}
    for i, layer in enumerate(snap.state.layers):
        tensors[f"layers.{i}.conv"] = layer.conv.detach().to("cpu").contiguous()
        tensors[f"layers.{i}.ssm"] = layer.ssm.detach().to("cpu").contiguous()
    metadata = {"format": FILE_FORMAT, "key": key, "seqlen": str(snap.state.seqlen),
                "text_tokens": str(snap.text_tokens), "crc32": str(_crc32(tensors))}
    return safetensors.torch.save(tensors, metadata)


def decode_snapshot(key: str, data: bytes) -> Snapshot:
    """The bytes of a state file -> its snapshot (CPU tensors); CorruptStateFile if anything is off."""
    try:
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8 : 8 + header_len]).get("__metadata__") or {}
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # noqa: BLE001 - the library's errors for truncated or malformed files vary
        raise CorruptStateFile(f"not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    if metadata.get("format") != FILE_FORMAT or metadata.get("key") != key:
        raise CorruptStateFile(f"format {metadata.get('format')!r}, key {metadata.get('key')!r}")
    if str(_crc32(tensors)) != metadata.get("crc32"):
        raise CorruptStateFile("the tensors' CRC-32 disagrees with the file's")
    n_layers = sum(name.endswith(".ssm") for name in tensors)
    try:
        layers = [LayerState(tensors[f"layers.{i}.conv"], tensors[f"layers.{i}.ssm"]) for i in range(n_layers)]
        logits = tensors["logits"]
        state = MambaState(layers, int(metadata["seqlen"]))
        text_tokens = int(metadata["text_tokens"])
    except (KeyError, ValueError) as exc:
        raise CorruptStateFile(f"missing or malformed entry {exc}") from None
    if len(tensors) != 2 * n_layers + 1 or logits.dim() != 1 or any(
            layer.ssm.dtype != torch.float32 or layer.ssm.shape != layers[0].ssm.shape
            or layer.conv.shape != layers[0].conv.shape for layer in layers):
        raise CorruptStateFile("unexpected tensors")
    return Snapshot(state, logits, text_tokens)


class DiskTier:
    """Snapshots by content key in `root`, at most `max_bytes` of files. Thread-safe."""

    def __init__(self, root: str | os.PathLike, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
        self.root, self.max_bytes = Path(root), int(max_bytes)
        self.root.mkdir(parents=True, exist_ok=True)
        self._index: OrderedDict[str, int] = OrderedDict()  # key -> file bytes, least recently used first
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, Snapshot, int] | None] = queue.Queue()
        self._pending_bytes = 0
        self._writer: threading.Thread | None = None
        self.hits = self.writes = self.errors = self.dropped = 0
        self.rescan()

    # --- index ------------------------------------------------------------------------------------------------------
    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}{SUFFIX}"

    def rescan(self) -> None:
        """Index the folder's state files, least recently used (oldest mtime) first; remove stale temporary files."""
        found, now = [], time.time()
        for path in self.root.glob(f"??/*{SUFFIX}*"):
            try:
                st = path.stat()
            except OSError:
                continue
            if path.name.endswith(SUFFIX):
                found.append((st.st_mtime, path.name[: -len(SUFFIX)], st.st_size))
            elif now - st.st_mtime > STALE_TEMP_S:
                path.unlink(missing_ok=True)
        with self._lock:
            self._index = OrderedDict((key, size) for _, key, size in sorted(found))

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    @property
    def bytes_in_use(self) -> int:
        with self._lock:
            return sum(self._index.values())

    # --- reads ------------------------------------------------------------------------------------------------------
    def get(self, key: str) -> Snapshot | None:
        """The snapshot stored under `key` (CPU tensors), or None: not stored, or a bad file (logged and removed)."""
        if key not in self._index:
            return None
        path = self.path(key)
        try:
            snap = decode_snapshot(key, path.read_bytes())
        except FileNotFoundError:  # removed by another process sharing the folder
            self._forget(key)
            return None
        except (OSError, CorruptStateFile) as exc:
            log.warning("state file %s is unusable (%s): treated as a miss and removed", path, exc)
            self.errors += 1
            self._forget(key)
            path.unlink(missing_ok=True)
            return None
        with self._lock:
            if key in self._index:
                self._index.move_to_end(key)
        try:
            os.utime(path)  # the use order survives restarts
        except OSError:
            pass
        self.hits += 1
        return snap

    def _forget(self, key: str) -> None:
        with self._lock:
            self._index.pop(key, None)

    # --- writes -----------------------------------------------------------------------------------------------------
    def put(self, key: str, snap: Snapshot) -> None:
        """Queue `snap` to be written under `key` (states are values: it is not copied). Dropped when already stored
        or when the queue holds more than MAX_PENDING_BYTES."""
        if key in self._index:
            return
        nbytes = snap.state.nbytes + snap.logits.numel() * 4
        with self._lock:
            if self._pending_bytes + nbytes > MAX_PENDING_BYTES:
                self.dropped += 1
                return
            self._pending_bytes += nbytes
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="state-disk-writer", daemon=True)
                self._writer.start()
        self._queue.put((key, snap, nbytes))

    def flush(self) -> None:
        """Wait until every queued write is on disk (or failed)."""
        self._queue.join()

    def _write_loop(self) -> None:
        while True:
            key, snap, nbytes = self._queue.get()
            try:
                self._write(key, snap)
            except Exception as exc:  # noqa: BLE001 - a full or read-only disk must not stop the app
                self.errors += 1
                log.warning("could not write state %s to %s: %s", key, self.root, exc)
            finally:
                with self._lock:
                    self._pending_bytes -= nbytes
                self._queue.task_done()

    def _write(self, key: str, snap: Snapshot) -> None:
        data = encode_snapshot(key, snap)
        if len(data) > self.max_bytes:
            return
        path = self.path(key)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self.writes += 1
        with self._lock:
            self._index[key] = len(data)
            self._index.move_to_end(key)
            total = sum(self._index.values())
            victims = []
            while total > self.max_bytes and len(self._index) > 1:
                victim, size = self._index.popitem(last=False)
                victims.append(victim)
                total -= size
        for victim in victims:
            self.path(victim).unlink(missing_ok=True)
