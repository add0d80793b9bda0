"""Bounded load test of the app on loopback (issue 8): N concurrent `gradio_client` users for a fixed time.

    python -m cobra_app.bench.load --users 16 --minutes 5 --model assets/demo-model --memory-budget 200MB \
        --out artifacts/load --doc docs/HARDENING.md

Each user is one browser tab (its own `gradio_client.Client`, hence its own session) with its own synthetic scene from
the demo model's world, so that every answer can be checked: it asks single-answer questions about its scene turn after
turn (/chat, streamed, greedy) and starts a new conversation (/clear) every `--turns-per-chat` turns. Measured: requests,
failed requests (an exception or an error notice) and wrong answers, latency and time to the first streamed token
(percentiles), throughput, and the app process's resident memory once a second. The memory bound is the app's resident
memory once the model is loaded and warm, plus the session budget. Afterwards, with the app stopped, every user's
conversations are replayed one at a time on the same model (`replay_alone`): a reply under load must equal the reply
alone, so that a wrong answer is the model's own error, never another user's image or state leaking in.

Bounded by design: the app is launched here on 127.0.0.1 only, the users and the duration are fixed, and each user
waits for its reply before asking again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from cobra_app.bench.app_process import running_app
from cobra_app.demo.conversations import ask
from cobra_app.demo.evaluate import normalise
from cobra_app.demo.scenes import Scene, render, sample_scene
from cobra_app.paths import DEMO_MODEL_DIR
from cobra_app.serving.config import parse_bytes
from cobra_app.ui.chat_view import message_text

QUESTION_KINDS = ("exist", "colour", "shape", "count", "spatial")
GREEDY = (16, 1.0, 1.0, 0, 1.0, True)  # /chat: max new tokens, temperature, top-p, top-k, repetition penalty, greedy
IMAGE_SIZE = 256  # pixels per side of the uploaded scene images (the model resizes them)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
BEGIN, END = "<!-- load:begin (written by cobra_app.bench.load) -->", "<!-- load:end -->"


@dataclass
class Request:
    user: int
    started_s: float  # since the start of the run
    latency_s: float
    ttft_s: float | None  # first streamed reply text
    ok: bool  # no exception, no error notice
    correct: bool | None  # the reply matches the scene's answer (None: the request failed)
    error: str = ""
    chat: int = 0  # the user's conversation it belongs to (a new one every `turns_per_chat` turns)
    question: str = ""
    answer: str = ""  # the scene's answer
    reply: str = ""  # as the app showed it
    alone: str | None = None  # the reply to the same conversation replayed alone afterwards (`replay_alone`)


@dataclass
class LoadReport:
    users: int
    seconds: float
    requests: list[Request] = field(default_factory=list)
    memory: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, app RSS bytes)
    rss_before_bytes: int = 0  # the app's RSS with the model loaded and warm, before the load
    budget_bytes: int = 0

    def summary(self) -> dict:
        done = [r for r in self.requests if r.ok]
        latencies = sorted(r.latency_s for r in done)
        ttfts = sorted(r.ttft_s for r in done if r.ttft_s is not None)
        peak = max((rss for _, rss in self.memory), default=0)
        return {
            "users": self.users,
            "seconds": round(self.seconds, 1),
            "requests": len(self.requests),
            "failed": sum(not r.ok for r in self.requests),
            "wrong_answers": sum(r.correct is False for r in self.requests),
            "replayed": sum(r.alone is not None for r in self.requests),
            "differ_from_alone": sum(r.alone is not None and r.alone != r.reply for r in self.requests),
            "wrong_alone": sum(r.alone is not None and not is_correct(r.alone, r.answer) for r in self.requests),
            "accuracy": round(sum(bool(r.correct) for r in done) / max(len(done), 1), 4),
            "requests_per_s": round(len(done) / max(self.seconds, 1e-9), 3),
            "latency_s": percentiles(latencies),
            "ttft_s": percentiles(ttfts),
            "rss_before_mb": round(self.rss_before_bytes / 1e6, 1),
            "rss_peak_mb": round(peak / 1e6, 1),
            "rss_end_mb": round(self.memory[-1][1] / 1e6, 1) if self.memory else None,
            "bound_mb": round((self.rss_before_bytes + self.budget_bytes) / 1e6, 1),
            "within_bound": peak <= self.rss_before_bytes + self.budget_bytes,
        }


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    q = np.percentile(values, [50, 90, 99])
    return {"p50": round(float(q[0]), 3), "p90": round(float(q[1]), 3), "p99": round(float(q[2]), 3),
            "max": round(max(values), 3), "mean": round(statistics.fmean(values), 3)}


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def reply_to(chat: list[dict], question: str) -> str:
    """The reply (so far) to `question` when it is the chat's last exchange, else "" (speed lines ignored)."""
    messages = [m for m in chat if not m.get("metadata")]
    if (len(messages) >= 2 and messages[-1]["role"] == "assistant"
            and message_text(messages[-2]["content"]) == question):
        return message_text(messages[-1]["content"])
    return ""


def is_correct(reply: str, answer: str) -> bool:
    """Exact match after normalisation; closed-set answers (Yes/No, True/False) by their first word."""
    if answer in ("Yes", "No", "True", "False"):
        words = normalise(reply).replace(",", " ").split()
        return bool(words) and words[0] == answer.lower()
    return normalise(reply) == normalise(answer)


def connect(url: str, attempts: int = 3, wait_s: float = 2.0, timeout_s: float = 30.0):
    """A `gradio_client.Client` for the app (one tab, one session): its first requests fetch the app's config and API,
    each given `timeout_s` (httpx's default is 5 s) and retried up to `attempts` times (a busy app may answer late)."""
    from gradio_client import Client

    for attempt in range(1, attempts + 1):
        try:
            return Client(url, verbose=False, httpx_kwargs={"timeout": timeout_s})
        except Exception:  # noqa: BLE001 - retried, then raised
            if attempt == attempts:
                raise
            time.sleep(wait_s)


class User(threading.Thread):
    """One tab: its own client, scene and questions; records a `Request` per turn until `deadline`."""

    def __init__(self, index: int, client, scene: Scene, image_path: Path, report: LoadReport, t0: float,
                 deadline: float, turns_per_chat: int, seed: int):
        super().__init__(name=f"user-{index}", daemon=True)
        self.index, self.client, self.scene, self.image_path = index, client, scene, image_path
        self.report, self.t0, self.deadline, self.turns_per_chat = report, t0, deadline, turns_per_chat
        self.rng = np.random.default_rng([seed, index])

    def question(self):
        while True:
            qa = ask(QUESTION_KINDS[int(self.rng.integers(len(QUESTION_KINDS)))], self.scene, self.rng)
            if qa is not None:
                return qa

    def run(self) -> None:
        from gradio_client import handle_file

        image = handle_file(str(self.image_path))
        turn = 0
        while time.monotonic() < self.deadline:
            qa = self.question()
            start = time.monotonic()
            ttft, chat, error = None, None, ""
            try:
                if turn and turn % self.turns_per_chat == 0:  # a new conversation (its time counts in this turn's)
                    self.client.predict(api_name="/clear")
                job = self.client.submit(image, qa.question, *GREEDY, api_name="/chat")
                for chat, _ in job:
                    if ttft is None and reply_to(chat, qa.question):
                        ttft = time.monotonic() - start
                chat, box = job.result()
                if box:  # the app gives the message back when it could not answer (the notice says why)
                    error = "the app returned the message unanswered"
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                error = f"{type(exc).__name__}: {exc}"
            latency = time.monotonic() - start
            ok = not error and chat is not None
            reply = reply_to(chat, qa.question).strip() if ok else ""
            self.report.requests.append(Request(self.index, start - self.t0, latency, ttft, ok,
                                                is_correct(reply, qa.answer) if ok else None, error,
                                                turn // self.turns_per_chat, qa.question, qa.answer, reply))
            turn += 1


def sample_memory(pid: int, report: LoadReport, t0: float, stop: threading.Event, every_s: float = 1.0) -> None:
    while not stop.is_set():
        report.memory.append((time.monotonic() - t0, rss_bytes(pid)))
        stop.wait(every_s)


def warm_up(clients: list, image_paths: list[Path]) -> None:
    """One exchange per user, all at once, before measuring: the app's worker threads and lazy initialisation are
    part of its resting memory, not of the load. Raises the first failure."""
    from gradio_client import handle_file

    errors: list[Exception] = []

    def exchange(client, path: Path) -> None:
        try:
            client.predict(handle_file(str(path)), "Is there a red circle in the image?", *GREEDY, api_name="/chat")
            client.predict(api_name="/clear")
        except Exception as exc:  # noqa: BLE001 - raised below, in the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=exchange, args=pair) for pair in zip(clients, image_paths)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(clients)} warm-up exchanges failed") from errors[0]


def user_image(workdir: Path, user: int) -> Path:
    """Where a user's scene image (the file it uploads) is written."""
    return workdir / f"user-{user}.png"


def run_load(url: str, pid: int, users: int, seconds: float, budget_bytes: int, turns_per_chat: int,
             seed: int, workdir: Path) -> LoadReport:
    rng = np.random.default_rng([seed, 99])
    scenes = [sample_scene(rng) for _ in range(users)]
    paths = [user_image(workdir, i) for i in range(users)]
    for scene, path in zip(scenes, paths):
        render(scene, IMAGE_SIZE).save(path)
    clients: list = []
    try:
        clients += [connect(url) for _ in paths]  # one at a time: the app serves its config to each
        warm_up(clients, paths)
        report = LoadReport(users, seconds, rss_before_bytes=rss_bytes(pid), budget_bytes=budget_bytes)
        t0 = time.monotonic()
        stop = threading.Event()
        sampler = threading.Thread(target=sample_memory, args=(pid, report, t0, stop), daemon=True)
        sampler.start()
        threads = [User(i, clients[i], scenes[i], paths[i], report, t0, t0 + seconds, turns_per_chat, seed)
                   for i in range(users)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        report.seconds = time.monotonic() - t0
        stop.set()
        sampler.join()
        report.memory.append((time.monotonic() - t0, rss_bytes(pid)))
        return report
    finally:
        for client in clients:
            client.close()


def replay_alone(model: str, report: LoadReport, workdir: Path, max_new_tokens: int = GREEDY[0]) -> None:
    """Ask every user's conversations again, one at a time, on the model the app served (chosen and loaded as the app
    does), and record each reply in `Request.alone`: a reply under load that differs from it was changed by the
    load (another user's image or state, a batching error), not by the model. Conversations with a failed request
    are not replayed."""
    from cobra_app.generation import SamplingParams
    from cobra_app.images import open_image
    from cobra_app.serving.config import parse_config
    from cobra_app.serving.model_choice import choose_model
    from cobra_app.sessions import SessionManager

    cfg = parse_config(["--model", model])
    manager = SessionManager(choose_model(cfg.model, cfg.fallback_model, device=cfg.device, dtype=cfg.dtype).cobra)
    params = SamplingParams(max_new_tokens=max_new_tokens, greedy=True)
    chats: dict[tuple[int, int], list[Request]] = {}
    for r in sorted(report.requests, key=lambda r: r.started_s):
        chats.setdefault((r.user, r.chat), []).append(r)
    for (user, _), requests in chats.items():
        if not all(r.ok for r in requests):
            continue
        sid = manager.open_session()
        manager.set_image(sid, open_image(user_image(workdir, user)))
        for r in requests:
            reply = manager.send(sid, r.question, params)
            for _ in reply:
                pass
            r.alone = reply.text.strip()
        manager.close_session(sid)


def format_summary(s: dict, command: str) -> str:
    lat, ttft = s["latency_s"], s["ttft_s"]
    return "\n".join([
        f"Command: `{command}`",
        "",
        "| users | seconds | requests | failed | wrong answers | accuracy | requests/s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {s['users']} | {s['seconds']} | {s['requests']} | {s['failed']} | {s['wrong_answers']} | "
        f"{s['accuracy']:.2%} | {s['requests_per_s']} |",
        "",
        "| seconds | p50 | p90 | p99 | max |",
        "|---|---:|---:|---:|---:|",
        f"| latency | {lat.get('p50')} | {lat.get('p90')} | {lat.get('p99')} | {lat.get('max')} |",
        f"| time to first token | {ttft.get('p50')} | {ttft.get('p90')} | {ttft.get('p99')} | {ttft.get('max')} |",
        "",
        f"App memory (RSS): {s['rss_before_mb']} MB with the model loaded and warm; peak {s['rss_peak_mb']} MB, "
        f"end {s['rss_end_mb']} MB; bound (before + session budget) {s['bound_mb']} MB: "
        f"{'within' if s['within_bound'] else 'ABOVE'} the bound.",
        "",
        f"The same conversations replayed one at a time afterwards, on the same model: {s['replayed']} replies, "
        f"{s['differ_from_alone']} differ from the reply under load; the model alone gets {s['wrong_alone']} of them "
        "wrong (its own errors, not the load's).",
    ])


def write_doc(doc: Path, text: str) -> None:
    block = f"{BEGIN}\n{text}\n{END}"
    old = doc.read_text() if doc.exists() else "# Load test\n\n"
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + block + old[old.index(END) + len(END):]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    doc.write_text(new)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cobra_app.bench.load", description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=16)
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--model", default=str(DEMO_MODEL_DIR), help="model the launched app serves")
    p.add_argument("--memory-budget", default="200MB", help="the app's session memory budget")
    p.add_argument("--concurrency", type=int, default=4, help="the app's --concurrency")
    p.add_argument("--turns-per-chat", type=int, default=8, help="turns before a user starts a new conversation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("artifacts/load"), help="folder for load.json")
    p.add_argument("--doc", type=Path, default=None, help="markdown file to write the summary into")
    args = p.parse_args(argv)
    if args.users < 1 or not 0 < args.minutes <= 60:
        p.error("--users must be >= 1 and --minutes in (0, 60]")
    budget = parse_bytes(args.memory_budget)
    command = "python -m cobra_app.bench.load " + " ".join(argv if argv is not None else sys.argv[1:])
    app_args = ("--model", args.model, "--memory-budget", str(budget), "--concurrency", str(args.concurrency))
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        with running_app(*app_args, log_path=args.out / "app.log") as url:
            assert urlparse(url).hostname in LOOPBACK
            report = run_load(url, url.pid, args.users, args.minutes * 60, budget, args.turns_per_chat, args.seed,
                              Path(tmp))
        replay_alone(args.model, report, Path(tmp))  # the app has stopped: the machine is this replay's alone
    summary = report.summary()
    (args.out / "load.json").write_text(json.dumps(
        {"command": command, "summary": summary, "requests": [asdict(r) for r in report.requests],
         "memory": report.memory}, indent=1) + "\n")
    text = format_summary(summary, command)
    print(text)
    if args.doc:
        write_doc(args.doc, text)
    return 0 if summary["failed"] == 0 and summary["differ_from_alone"] == 0 and summary["within_bound"] else 1


if __name__ == "__main__":
    sys.exit(main())
