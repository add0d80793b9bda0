"""A process setting for serving many users from worker threads: fewer glibc malloc arenas.

glibc gives threads that allocate at the same time their own malloc arenas (up to 8 per core), and memory freed into
an arena stays with that arena. The app runs the model in whichever worker thread serves a request, so the tensors of
prefills and decode steps come and go across many arenas, and the process keeps each arena's high-water mark.
Measured with the load script (16 users for five minutes, demo model, docs/HARDENING.md): the app's memory grew by
224 MB with glibc's default, still rising at the end, and by 78 MB with two arenas, level after the first 20 seconds.
"""

from __future__ import annotations

import ctypes
import os

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
