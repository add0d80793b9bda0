"""Memory comes back (issue 24): sessions opened, used and closed in cycles against the launched app, and the app's
resident memory after each cycle.

    flock /tmp/cobra-heavy.lock python -m cobra_app.bench.soak [--sessions 200] [--turns 3] [--cycles 5]

The app is launched on 127.0.0.1 (`python app.py`, the demo model by default). Each session is one
`gradio_client.Client`, the API's tab: it uploads an image of its own (a new synthetic scene; every `--large-every`th
one rendered at `--large-size` pixels a side, a photo's size), asks `--turns` questions about it (/chat, greedy) and
closes; the app closes the conversation when the client's connection ends (Gradio's unload, as for a browser tab).
`--workers` sessions run at a time. After each cycle, once the app's log says that every session of the cycle is
closed, the app's RSS is read (Linux /proc), and the state store's accounted bytes from the app's last close line.

A closed session's states are not freed: they are demoted in the content-addressed state store (another session, an
API request or a restart may resume from them) and evicted first when memory is needed. The store's byte budget
(`--memory-budget`, shared with the image embeddings) bounds what they hold. Every image is new, so the store fills
to its budget in the first cycle and stays there: that much is held by design. The target is on the rest, the RSS
minus the store's bytes: after every cycle within `--tolerance-mb` (50 MB) of the first cycle's. The RSS itself is
printed too. Exits 1 when a request failed, a session stayed open or the memory outside the store was not flat.
"""

from __future__ import annotations

import argparse
import dataclasses
import queue
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cobra_app.bench.app_process import running_app
from cobra_app.bench.load import QUESTION_KINDS, connect, reply_to, rss_bytes
from cobra_app.demo.conversations import ask
from cobra_app.demo.scenes import render, sample_scene
from cobra_app.paths import DEMO_MODEL_DIR
from cobra_app.ui.params import ParamValues

# the app's log line on unload
CLOSED = re.compile(r"browser tab gone: its session is closed \((\d+) open; state store (\d+) of (\d+) bytes\)")
MB = 10**6


@dataclass
class Cycle:
    sessions: int
    requests: int
    failed: int
    seconds: float
    rss_bytes: int  # once every session of the cycle is closed
    open_sessions: int  # the app's count after the cycle's last close
    store_bytes: int  # the state store's accounted bytes then (states and image embeddings)
    store_budget_bytes: int
    unopened: int = 0  # sessions whose client could not connect (their requests count as failed)
    closed_total: int = 0  # the sessions the app has closed so far, by its log

    @property
    def outside_store_bytes(self) -> int:
        return self.rss_bytes - self.store_bytes


def questions(scene, rng: np.random.Generator, n: int) -> list[str]:
    asked: list[str] = []
    while len(asked) < n:
        qa = ask(QUESTION_KINDS[int(rng.integers(len(QUESTION_KINDS)))], scene, rng)
        if qa is not None:
            asked.append(qa.question)
    return asked


def one_session(url: str, image: Path, asked: list[str], params: dict) -> tuple[int, int, bool]:
    """Open a session (a client), ask about `image`, close it. Returns (requests, failed, whether the client could
    connect at all: if not, every request counts as failed)."""
    from gradio_client import handle_file

    try:
        client = connect(url)
    except Exception:  # noqa: BLE001 - counted and reported
        return len(asked), len(asked), False
    failed = 0
    try:
        for question in asked:
            try:
                chat, box = client.predict(handle_file(str(image)), question, api_name="/chat", **params)
                failed += bool(box) or not reply_to(chat, question).strip()
            except Exception:  # noqa: BLE001 - counted and reported
                failed += 1
    finally:
        client.close()
    return len(asked), failed, True


def closed_so_far(log: Path) -> tuple[int, tuple[int, int, int]]:
    """From the app's log: the sessions it has closed on unload, and after the last of them (sessions open, the state
    store's bytes in use, its budget); (-1, 0, 0) before any."""
    closes = CLOSED.findall(log.read_text())
    return len(closes), tuple(map(int, closes[-1])) if closes else (-1, 0, 0)


def run_cycle(url: str, log: Path, workdir: Path, args: argparse.Namespace, rng: np.random.Generator,
              closed_before: int) -> Cycle:
    """`args.sessions` sessions, `args.workers` at a time; waits until the app has closed them all."""
    jobs: queue.Queue = queue.Queue()
    for i in range(args.sessions):
        size = args.large_size if args.large_every and i % args.large_every == 0 else 256
        scene = sample_scene(rng)
        path = workdir / f"session-{i}.png"
        render(scene, size).save(path)
        jobs.put((path, questions(scene, rng, args.turns)))
    params = dataclasses.asdict(ParamValues(max_new_tokens=args.max_new_tokens))
    totals = {"requests": 0, "failed": 0, "unopened": 0}
    lock = threading.Lock()

    def worker() -> None:
        while True:
            try:
                path, asked = jobs.get_nowait()
            except queue.Empty:
                return
            requests, failed, opened = one_session(url, path, asked, params)
            with lock:
                totals["requests"] += requests
                totals["failed"] += failed
                totals["unopened"] += not opened

    start = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(args.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - start
    deadline = time.monotonic() + args.close_timeout_s
    closed, after = closed_so_far(log)
    while closed < closed_before + args.sessions - totals["unopened"] and time.monotonic() < deadline:
        time.sleep(1)
        closed, after = closed_so_far(log)
    time.sleep(args.settle_s)
    return Cycle(args.sessions, totals["requests"], totals["failed"], seconds, rss_bytes(url.pid), *after,
                 unopened=totals["unopened"], closed_total=closed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cobra_app.bench.soak", description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=200, help="sessions per cycle")
    p.add_argument("--turns", type=int, default=3, help="questions per session")
    p.add_argument("--cycles", type=int, default=5)
    p.add_argument("--workers", type=int, default=4, help="sessions at a time")
    p.add_argument("--model", default=str(DEMO_MODEL_DIR), help="model the launched app serves")
    p.add_argument("--memory-budget", default="64MB", help="the app's --memory-budget (its image and state cache)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--large-every", type=int, default=10, help="every Nth session uploads a large image (0: none)")
    p.add_argument("--large-size", type=int, default=3000, help="pixels a side of the large images")
    p.add_argument("--tolerance-mb", type=float, default=50.0)
    p.add_argument("--settle-s", type=float, default=10.0, help="wait after the last close before reading the RSS")
    p.add_argument("--close-timeout-s", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log", type=Path, default=Path("artifacts/soak/app.log"))
    args = p.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    cycles: list[Cycle] = []
    args.log.parent.mkdir(parents=True, exist_ok=True)
    print(f"Soak: {args.cycles} cycles of {args.sessions} sessions ({args.turns} turns each, {args.workers} at a "
          f"time), model {args.model}, memory budget {args.memory_budget}; one image in {args.large_every} "
          f"{args.large_size}x{args.large_size} pixels", flush=True)
    with tempfile.TemporaryDirectory() as tmp, \
            running_app("--model", args.model, "--memory-budget", args.memory_budget, log_path=args.log) as url:
        warm_up = argparse.Namespace(**{**vars(args), "sessions": args.workers})
        warm = run_cycle(url, args.log, Path(tmp), warm_up, rng, 0)
        print(f"warm-up: {warm.sessions} sessions; app RSS {warm.rss_bytes / MB:.1f} MB", flush=True)
        for k in range(1, args.cycles + 1):
            cycles.append(run_cycle(url, args.log, Path(tmp), args, rng, (cycles[-1] if cycles else warm).closed_total))
            print(describe(k, cycles[-1], cycles[0]), flush=True)
    return 0 if verdict(cycles, args.tolerance_mb) else 1


def describe(k: int, cycle: Cycle, first: Cycle) -> str:
    return (f"cycle {k}: {cycle.sessions} sessions ({cycle.unopened} could not connect), {cycle.requests} requests, "
            f"{cycle.failed} failed, "
            f"{cycle.seconds:.0f} s; {cycle.open_sessions} sessions open afterwards; app RSS "
            f"{cycle.rss_bytes / MB:.1f} MB ({(cycle.rss_bytes - first.rss_bytes) / MB:+.1f} MB vs cycle 1), "
            f"state store {cycle.store_bytes / MB:.1f} of {cycle.store_budget_bytes / MB:.1f} MB, RSS outside it "
            f"{cycle.outside_store_bytes / MB:.1f} MB ({(cycle.outside_store_bytes - first.outside_store_bytes) / MB:+.1f}"
            f" MB)")


def verdict(cycles: list[Cycle], tolerance_mb: float) -> bool:
    """Print and return whether the memory outside the store stayed flat, nothing failed and every session closed."""
    def spread(bytes_of) -> float:
        return max(abs(bytes_of(c) - bytes_of(cycles[0])) for c in cycles) / MB

    outside, rss = spread(lambda c: c.outside_store_bytes), spread(lambda c: c.rss_bytes)
    failed = sum(c.failed for c in cycles)
    left_open = max(c.open_sessions for c in cycles)
    ok = outside <= tolerance_mb and failed == 0 and left_open == 0
    sessions_so_far = np.cumsum([c.sessions for c in cycles])
    per_session = np.polyfit(sessions_so_far, [c.outside_store_bytes for c in cycles], 1)[0] / 10**3 \
        if len(cycles) > 1 else 0.0  # least-squares slope over the cycles
    print(f"\nRSS outside the state store after each cycle within {outside:.1f} MB of the first (target "
          f"{tolerance_mb:g} MB), trend {per_session:+.1f} kB per session; "
          f"RSS itself within {rss:.1f} MB; the store at most "
          f"{max(c.store_bytes for c in cycles) / MB:.1f} MB (budget {cycles[0].store_budget_bytes / MB:.1f} MB); "
          f"{failed} failed requests; {left_open} sessions left open: {'met' if ok else 'MISSED'}")
    return ok


if __name__ == "__main__":
    sys.exit(main())
