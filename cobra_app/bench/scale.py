"""Benchmark (not a test): conversations through the OpenAI-compatible API on Ray Serve, at 1 and 2 model replicas,
routed by conversation and at random; and what moving a state between replicas costs at cobra+3b sizes.

    flock /tmp/cobra-heavy.lock python -m cobra_app.bench.scale            # the offline demo model, 2 CPUs

A local Ray instance (no dashboard) runs the whole application (`cobra_app.scale`): the ingress and N replicas of
the model with `--threads` threads each. `--conversations` clients talk at once, each about an example scene, each
resending its whole history every turn (greedy, half of them streamed). Per layout: aggregate throughput (completion
tokens / wall time, median over `--rounds` rounds of new conversations about the same scenes: the first round also
encodes the images) and the share of follow-up turns whose state was in the memory of the replica that served them. Then a cobra+3b-sized state (random, bf16 weights) is
moved between two Ray actors through the object store, and written to / read from the disk tier, `--repeats` times.

The workload's driver (`conversation_plan`, `converse`, `run_conversations`) is also the end-to-end test's
(tests/scale/test_scale_out.py). Other helpers' jobs may share the CPU: quote runs taken under the lock.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from cobra_app.paths import DEMO_MODEL_DIR, EXAMPLES_DIR

SCENES = json.loads((EXAMPLES_DIR / "examples.json").read_text())
MidReply = Callable[[int, int], None]


def conversation_plan(index: int, shift: int, turns: int) -> tuple[str, list[str]]:
    """(scene file, questions): conversation `index` is about scene index % 4, its questions rotated by `shift` (and
    by 3 more for each further round of scenes), so that conversations of one shift begin differently."""
    scene = SCENES[index % len(SCENES)]
    questions = [q["question"] for q in scene["questions"]]
    start = (shift + 3 * (index // len(SCENES))) % len(questions)
    rotated = questions[start:] + questions[:start]
    return scene["image"], [rotated[t % len(rotated)] for t in range(turns)]


def first_message(index: int, shift: int) -> tuple[Image.Image, list[tuple[str, str]]]:
    """(image, [its first user message]) of a conversation, as the ingress reads them (its routing key's input)."""
    image_file, questions = conversation_plan(index, shift, 1)
    return Image.open(EXAMPLES_DIR / image_file).convert("RGB"), [("user", questions[0])]


@dataclass
class Conversation:
    replies: list[str]
    completion_tokens: int


def converse(api_url: str, index: int, shift: int, turns: int, *, stream: bool,
             mid_reply: MidReply | None = None) -> Conversation:
    """One conversation through the openai client, resending its history each turn. mid_reply(index, turn) is called
    as a streamed reply's first chunk arrives."""
    import openai

    from cobra_app.api.image_urls import image_data_url

    client = openai.OpenAI(base_url=api_url, api_key="unused", max_retries=0, timeout=600)
    image, [(_, first)] = first_message(index, shift)
    _, questions = conversation_plan(index, shift, turns)
    model = client.models.list().data[0].id
    messages, replies, tokens = [], [], 0
    for turn, question in enumerate(questions):
        content = ([{"type": "image_url", "image_url": {"url": image_data_url(image)}}, {"type": "text", "text": first}]
                   if turn == 0 else question)
        messages.append({"role": "user", "content": content})
        if stream:
            text, usage = "", None
            chunks = client.chat.completions.create(model=model, messages=messages, stream=True,
                                                    stream_options={"include_usage": True})
            for n, chunk in enumerate(chunks):
                if mid_reply and n == 0:
                    mid_reply(index, turn)
                text += "".join(c.delta.content or "" for c in chunk.choices)
                usage = chunk.usage or usage
        else:
            completion = client.chat.completions.create(model=model, messages=messages)
            text, usage = completion.choices[0].message.content, completion.usage
        tokens += usage.completion_tokens
        messages.append({"role": "assistant", "content": text})
        replies.append(text)
    return Conversation(replies, tokens)


def run_conversations(api_url: str, conversations: int, turns: int, shift: int,
                      mid_reply: MidReply | None = None) -> tuple[dict[int, Conversation], float]:
    """`conversations` at once (the even ones streamed) -> (by index, wall seconds). Raises if any failed."""
    results, errors = {}, []

    def one(i: int) -> None:
        try:
            results[i] = converse(api_url, i, shift, turns, stream=i % 2 == 0, mid_reply=mid_reply)
        except Exception as exc:  # noqa: BLE001 - collected, raised together below
            errors.append(f"conversation {i}: {exc!r}")

    threads = [threading.Thread(target=one, args=(i,), name=f"conversation-{i}") for i in range(conversations)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("; ".join(errors))
    return results, time.perf_counter() - t0


def follow_up_sources(records, keys: set[str]) -> Counter:
    """Where the follow-up turns (requests with history) of the conversations `keys` found their state."""
    return Counter(r.state_source for r in records if r.routing_key in keys and r.messages > 1)


# --- the benchmark ------------------------------------------------------------------------------------------------------
def _layout_run(args, port: int, replicas: int, routing: str) -> dict:
    from ray import serve

    from cobra_app.scale.application import INGRESS_DEPLOYMENT, build_app
    from cobra_app.scale.client import routing_key
    from cobra_app.serving.config import AppConfig

    name = f"bench-{replicas}-{routing}"
    cfg = AppConfig(model=args.model, replicas=replicas, num_cpus=args.threads, routing=routing,
                    concurrency=args.conversations, max_new_tokens=64)
    serve.run(build_app(cfg), name=name, route_prefix=f"/{name}")
    api_url = f"http://127.0.0.1:{port}/{name}/v1"
    ingress = serve.get_deployment_handle(INGRESS_DEPLOYMENT, app_name=name)
    rates, sources = [], Counter()
    for round_ in range(args.rounds):
        results, seconds = run_conversations(api_url, args.conversations, args.turns, shift=round_)
        rates.append(sum(c.completion_tokens for c in results.values()) / seconds)
        keys = {routing_key(*first_message(i, round_)) for i in range(args.conversations)}
        sources += follow_up_sources(ingress.requests.remote().result(), keys)
    serve.delete(name)
    return {"tokens_per_s": statistics.median(rates), "rates": rates, "sources": sources}


def state_moves(repeats: int) -> dict[str, float]:
    """Median seconds to move a cobra+3b-sized snapshot (bf16 weights) between two Ray actors through the object
    store, and to write / read it through the disk tier."""
    import ray
    import torch

    from cobra_app.loading.registry import MODELS
    from cobra_app.model.mamba import MambaState
    from cobra_app.sessions.disk import decode_snapshot, encode_snapshot
    from cobra_app.sessions.snapshot import Snapshot

    llm = MODELS["cobra+3b"].config.llm
    state = MambaState.zeros(llm, dtype=torch.bfloat16)
    for layer in state.layers:
        layer.conv.normal_()
        layer.ssm.normal_()
    snap = Snapshot(state, torch.randn(llm.padded_vocab_size), 100)

    @ray.remote(num_cpus=0)
    class Holder:
        def __init__(self, snap):
            self.snap = snap

        def export(self):
            return self.snap

    holder = Holder.remote(snap)
    ray.get(holder.export.remote())  # warm
    moves, writes, reads = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/state.safetensors"
        for _ in range(repeats):
            t0 = time.perf_counter()
            ray.get(holder.export.remote())
            moves.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with open(path, "wb") as f:
                f.write(encode_snapshot("k", snap))
                f.flush()
                os.fsync(f.fileno())
            writes.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with open(path, "rb") as f:
                decode_snapshot("k", f.read())
            reads.append(time.perf_counter() - t0)
    ray.kill(holder)
    return {"bytes": state.nbytes + snap.logits.numel() * 4, "object_store_s": statistics.median(moves),
            "disk_write_s": statistics.median(writes), "disk_read_s": statistics.median(reads)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cobra_app.bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEMO_MODEL_DIR))
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (and Ray CPUs) per replica")
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3, help="1 to 3")
    parser.add_argument("--repeats", type=int, default=5, help="state moves timed")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 3:
        parser.error("--rounds must be 1, 2 or 3 (the example scenes give 3 x 8 distinct conversations)")

    import ray
    from ray import serve

    from cobra_app.serving.ports import free_port

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        layouts = {(r, routing): _layout_run(args, port, r, routing)
                   for r, routing in ((1, "affinity"), (2, "affinity"), (2, "random"))}
        moves = state_moves(args.repeats)
    finally:
        serve.shutdown()
        ray.shutdown()
    print(f"{args.conversations} conversations x {args.turns} turns at once, {args.model}, replicas of "
          f"{args.threads} thread(s), Ray on {args.cpus} CPUs (the ingress, the proxy and the clients share them)")
    print("| replicas | routing | tokens/s (median) | rounds | follow-ups with their state on the serving replica |")
    print("|---|---|---|---|---|")
    for (replicas, routing), run in layouts.items():
        sources = run["sources"]
        total = sum(sources.values())
        print(f"| {replicas} | {routing} | {run['tokens_per_s']:.1f} | "
              f"{', '.join(f'{r:.1f}' for r in run['rates'])} | {sources['memory']}/{total} "
              f"({sources['memory'] / total:.0%}; {dict(sources)}) |")
    ratio = layouts[(2, "affinity")]["tokens_per_s"] / layouts[(1, "affinity")]["tokens_per_s"]
    print(f"throughput 2 / 1 replicas: {ratio:.2f}")
    print(f"a cobra+3b state ({moves['bytes'] / 1e6:.1f} MB, bf16 weights): object store between actors "
          f"{moves['object_store_s'] * 1e3:.0f} ms, disk tier write {moves['disk_write_s'] * 1e3:.0f} ms, "
          f"read {moves['disk_read_s'] * 1e3:.0f} ms (from the page cache; medians of {args.repeats})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
