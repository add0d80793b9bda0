"""Spec: process settings for many worker threads: two malloc arenas, and freed memory handed back to the system."""

import ctypes
import os
import subprocess
import sys

import pytest

ARENA_PROBE = """
import ctypes, sys, threading
from cobra_app.serving.malloc import limit_malloc_arenas
if sys.argv[1] == "cap":
    assert limit_malloc_arenas()
barrier = threading.Barrier(8)
def work():  # eight threads allocating at the same time, as the app's workers running the model do
    keep = [bytearray(50_000) for _ in range(20)]
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
ctypes.CDLL(None).malloc_stats()  # one "Arena N:" block per malloc arena, on stderr
"""


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "malloc_stats"), reason="not glibc")
def test_the_app_caps_malloc_arenas_so_worker_threads_share_freed_memory():
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}

    def arenas(mode: str) -> int:
        run = subprocess.run([sys.executable, "-c", ARENA_PROBE, mode], env=env, capture_output=True, text=True,
                             check=True)
        return sum(line.startswith("Arena ") for line in run.stderr.splitlines())

    assert arenas("default") > 2  # glibc: a new arena per thread (up to 8 per core)
    assert arenas("cap") == 2


RELEASE_PROBE = """
import sys, threading, time
from cobra_app.serving.malloc import keep_releasing_free_memory, limit_malloc_arenas, release_free_memory
limit_malloc_arenas()
def rss():  # MB
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
def work():  # six image-sized blocks allocated and freed in a worker thread, a small block surviving each
    keep.append([small for _, small in [(bytearray(20 * 2**20), bytearray(1000)) for _ in range(6)]])
keep = []
warm = bytearray(20 * 2**20)
del warm  # a large block freed: glibc now serves blocks of this size from its arenas, not from fresh mappings
base = rss()
if sys.argv[1] == "thread":
    keep_releasing_free_memory(every_s=0.2)
for _ in range(3):
    t = threading.Thread(target=work)
    t.start()
    t.join()
held = rss()
if sys.argv[1] == "call":
    release_free_memory()
else:
    time.sleep(1)
print(base, held, rss())
"""


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "malloc_trim"), reason="not glibc")
@pytest.mark.parametrize("mode", ["call", "thread"])
def test_memory_freed_in_worker_threads_goes_back_to_the_system(mode):
    run = subprocess.run([sys.executable, "-c", RELEASE_PROBE, mode], capture_output=True, text=True, check=True)
    base, held, after = map(float, run.stdout.split())
    assert held - base > 100  # glibc kept the 360 MB freed (what the app did with large uploads)
    assert after - base < 10  # handed back, by a call or by the app's thread
