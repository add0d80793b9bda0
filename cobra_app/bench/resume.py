"""Benchmark (not a test): what resuming a conversation after a restart costs, against a memory hit.

    python -m cobra_app.bench.resume                                  # random weights at cobra+3b sizes, bf16
    python -m cobra_app.bench.resume --model random:cobra+3b --repeats 5 --state-dir /tmp/states

A client has a conversation through `SessionManager.complete` with the disk tier on (`state_dir`), then resends it
with a new question, three ways, interleaved, `--repeats` times:
- memory: to the same manager: the conversation's state is in memory;
- disk, warm: to a new manager over the same folder (a restarted process): the state comes from its file, which the
  operating system still caches;
- disk, cold: the same after the files were dropped from the page cache (posix_fadvise DONTNEED): read from the disk.
Each request asks a different question of the same token length, so all three resume at the same point and read the
same number of new tokens. Printed per request: the state store's lookup (finding and reading the stored state) and
the time to first token (lookup, prefill of the new tokens, first decode step); medians, and the ratios of time to
first token disk / memory (target: <= 1.5).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from cobra_app.generation import SamplingParams

QUESTION = "Question {:02d}: what else can you see in the picture?"  # the same token count for 10..99


def drop_page_cache(folder: Path) -> None:
    """Ask the kernel to forget the cached pages of every state file (they are fsynced: nothing is lost)."""
    for path in folder.glob("*/*.safetensors"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def ask(manager, image, messages, params):
    """Send one request; (time to first token in s, time of the state store's lookup in s (finding and reading the
    stored state), its stats)."""
    store, spent = manager.store, []
    longest = store.longest

    def timed(keys):
        t0 = time.perf_counter()
        try:
            return longest(keys)
        finally:
            spent.append(time.perf_counter() - t0)

    store.longest = timed
    try:
        reply = manager.complete(image, messages, params)
        for _ in reply:
            pass
    finally:
        del store.longest
    return reply.stats.ttft_s, sum(spent), reply.stats


def run(cobra, image, state_dir: Path, *, turns: int = 2, repeats: int = 5, out=sys.stdout) -> dict[str, float]:
    from cobra_app.sessions import SessionManager

    params = SamplingParams(max_new_tokens=2)

    def manager():
        return SessionManager(cobra, state_dir=state_dir, max_context_tokens=1 << 20)

    info = cobra.info()
    print(f"model {info['model_id']} ({info['source']}): {info['parameters'] / 1e9:.2f} B parameters, "
          f"{info['device']}, {info['dtype']}, ops {info['ops']}, state {info['state_bytes'] / 1e6:.1f} MB; "
          f"CPU threads {torch.get_num_threads()}; state folder {state_dir}", file=out)
    first = manager()
    messages = []
    for turn in range(turns):
        messages.append(("user", QUESTION.format(10 + turn)))
        reply = first.complete(image, messages, SamplingParams(max_new_tokens=4))
        for _ in reply:
            pass
        messages.append(("assistant", reply.release_text))
    first.close()
    ask(first, image, [*messages, ("user", QUESTION.format(20))], params)  # first-call overheads out of the timings
    times: dict[str, list[float]] = {"memory": [], "disk, warm": [], "disk, cold": []}
    lookups: dict[str, list[float]] = {way: [] for way in times}
    print(f"{'repeat':>6} | {'way':<10} | {'prompt':>6} {'cached':>6} {'read':>5} | {'lookup':>8} {'1st token':>9}",
          file=out)
    for r in range(repeats):
        for k, way in enumerate(times):
            request = [*messages, ("user", QUESTION.format(30 + 3 * r + k))]
            if way == "memory":
                target = first
            else:
                first.close()
                if way == "disk, cold":
                    drop_page_cache(state_dir)
                target = manager()  # a restarted process: empty memory, the same folder
            ttft, lookup, stats = ask(target, image, request, params)
            if way != "memory" and target.stats()["disk_hits"] < 1:
                raise RuntimeError("the restarted manager did not resume from disk")
            target.close()  # its queued writes end before the next measurement starts
            times[way].append(ttft)
            lookups[way].append(lookup)
            print(f"{r + 1:>6} | {way:<10} | {stats.prompt_tokens:>6} {stats.cached_tokens:>6} "
                  f"{stats.prefill_tokens:>5} | {lookup * 1000:>6.1f}ms {ttft * 1000:>7.0f}ms", file=out)
    medians = {way: statistics.median(t) for way, t in times.items()}
    for way in ("disk, warm", "disk, cold"):
        medians[f"{way} / memory"] = medians[way] / medians["memory"]
    print("median lookups: " + ", ".join(f"{way} {statistics.median(t) * 1000:.1f} ms" for way, t in lookups.items()),
          file=out)
    print("medians: " + ", ".join(f"{way} {medians[way] * 1000:.0f} ms" for way in times) + "; resume after a restart"
          f" / memory hit: warm {medians['disk, warm / memory']:.2f}x, cold {medians['disk, cold / memory']:.2f}x "
          "(target <= 1.5)", file=out)
    return medians


def main(argv: list[str] | None = None) -> int:
    from PIL import Image

    from cobra_app.bench.run import build_model
    from cobra_app.bench.turns import synthetic_image

    p = argparse.ArgumentParser(prog="python -m cobra_app.bench.resume", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="random:cobra+3b", help="random:<registry id> (random weights) or a model")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--device", default="auto")
    p.add_argument("--image", default=None, help="image file (default: a synthetic picture)")
    p.add_argument("--turns", type=int, default=2, help="exchanges before the resent request")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--state-dir", type=Path, default=None, help="folder for the disk tier (default: a temporary one)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cobra = build_model(args.model, args.device, args.dtype)
    image = Image.open(args.image).convert("RGB") if args.image else synthetic_image()
    with tempfile.TemporaryDirectory(prefix="cobra-states-") as tmp:
        run(cobra, image, args.state_dir or Path(tmp), turns=args.turns, repeats=args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
