"""Process settings for serving many users from worker threads: fewer glibc malloc arenas, and free memory handed back.

glibc gives threads that allocate at the same time their own malloc arenas (up to 8 per core), and memory freed into
an arena stays with that arena. The app runs the model in whichever worker thread serves a request, so the tensors of
prefills and decode steps come and go across many arenas, and the process keeps each arena's high-water mark.
Measured with the load script (16 users for five minutes, demo model, docs/HARDENING.md): the app's memory grew by
224 MB with glibc's default, still rising at the end, and by 78 MB with two arenas, level after the first 20 seconds.

Even in two arenas, glibc keeps what the app frees: below 32 MB an allocation comes from an arena once a larger one
has been freed, and a freed block goes back to the system only when it is at an arena's top. A large uploaded image
(its pixels, their copies and hash, decoded in worker threads) left tens of MB behind that no later session reused
(docs/HARDENING.md, the soak). `malloc_trim(0)` hands every free page back; it costs nothing when there is nothing
to return and about 45 ms to return 126 MB, so a daemon thread calls it every few seconds.
"""
from __future__ import annotations

import ctypes
import os
import threading

M_ARENA_MAX = -8  # mallopt's parameter number (glibc malloc.h)
DEFAULT_ARENAS = 2


def limit_malloc_arenas(arenas: int = DEFAULT_ARENAS) -> bool:
    """Cap glibc's malloc arenas at `arenas`, unless MALLOC_ARENA_MAX is set (glibc then reads it itself). Call it
    before the worker threads start. Returns whether a cap is in effect (False where the C library is not glibc)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return True
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process runs on
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))


def release_free_memory() -> bool:
    """Hand the memory glibc holds free, in every arena, back to the system (`malloc_trim(0)`). Returns whether any
    was released (False also where the C library is not glibc)."""
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    return bool(malloc_trim(0))


def keep_releasing_free_memory(every_s: float = 5.0) -> threading.Thread:
    """A daemon thread calling `release_free_memory` every `every_s` seconds for the life of the process."""

    def run() -> None:
        while True:
            threading.Event().wait(every_s)
            release_free_memory()

    thread = threading.Thread(target=run, name="release-free-memory", daemon=True)
    thread.start()
    return thread
