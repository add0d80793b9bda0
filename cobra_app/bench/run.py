"""Speed benchmark: `python -m cobra_app bench [--model random:cobra+3b|PATH] [--dtype bfloat16] [--out DIR]`
(a release-layout run's own files: `--llm DIR`, `--vision-weights DIR`).

Measures in one run, on one model: the machine's ceilings (matmul GFLOP/s, copy GB/s), image encoding, prefill and
decode speed, time to first token per turn over a multi-turn chat with sessions versus the release's way (re-encode
the image and re-read the whole conversation every turn), batched decode across sessions, state size and peak memory,
and transformers' `MambaForCausalLM` on the same weights and dtype as the peer. Prints a table of absolute figures and
ratios, writes `bench.json` and `ttft_per_turn.png` to --out. Every ratio compares figures measured in this run, and
the decode, batched and prefill figures it compares are timed in turns (round by round), not one after the other.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from cobra_app.bench.ceilings import copy_case, interleaved_seconds, matmul_case, matmul_gflops, median_seconds
from cobra_app.cli.model_files import add_model_file_options, model_file_options
from cobra_app.model.mamba import MambaState
from cobra_app.pipeline import Cobra, load

RANDOM_PREFIX = "random:"


@dataclass
class Results:
    """Everything measured, JSON-serialisable; `rows` is the printed table (name, value, unit, note)."""

    figures: dict[str, float] = field(default_factory=dict)
    per_turn: dict[str, list[float | None]] = field(default_factory=dict)
    rows: list[tuple[str, float, str, str]] = field(default_factory=list)

    def add(self, key: str, value: float, unit: str, note: str = "") -> float:
        self.figures[key] = value
        self.rows.append((key, value, unit, note))
        print(f"  measured {key} = {value:.4g} {unit} {note}", flush=True)  # progress, and figures survive a kill
        return value


def build_model(spec: str, device: str, dtype: str, llm: str | None = None, vision: str | None = None) -> Cobra:
    """`random:<registry id>` = random weights at that model's real sizes (demo tokenizer for ids); else `load()`."""
    if not spec.startswith(RANDOM_PREFIX):
        return load(spec, device=device, dtype=dtype, llm=llm, vision=vision)
    from cobra_app.demo.tokenizer import build_demo_tokenizer
    from cobra_app.loading import build_random, resolve_device, resolve_dtype
    from cobra_app.loading.registry import MODELS

    config = MODELS[spec.removeprefix(RANDOM_PREFIX)].config
    dev = resolve_device(device)
    vlm = build_random(config, resolve_dtype(dtype if dtype != "auto" else "bfloat16", dev, 0), device=dev)
    return Cobra(vlm.eval().requires_grad_(False), build_demo_tokenizer(), spec)


def random_ids(n: int, vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(2, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def measure_model(cobra: Cobra, args: argparse.Namespace, res: Results) -> None:
    """Image encoding, prefill and decode of our implementation and of the transformers peer. Figures that a target
    compares are timed in turns (`interleaved_seconds`): our prefill with the matmul ceiling, our decode step with
    the peer's and with the copy whose bandwidth sets the decode floor."""
    vlm, lm, dev = cobra.vlm, cobra.vlm.llm, cobra.device
    size = vlm.config.vision.image_size
    pixels = {k: torch.randn(1, 3, size, size, device=dev) for k in vlm.image_transform.transforms}
    res.add("image_encode_s", median_seconds(lambda: vlm.encode_images(pixels), args.repeats), "s")

    embeds = lm.embed(random_ids(args.prefill_tokens, cobra.vocab_size, 0).to(dev))
    ceiling = matmul_case(lm.dtype, dev)
    prefill = interleaved_seconds(
        {"ours": lambda: lm(inputs_embeds=embeds, logits_to_keep=1), "ceiling": ceiling.call},
        args.repeats,
        per_round={"ours": 1, "ceiling": 5},  # one matmul takes ~0.1 s: the median of 5 per round
    )
    prefill_s = statistics.median(prefill["ours"])
    res.add("matmul_gflops_model_dtype", ceiling.rate(statistics.median(prefill["ceiling"])), "GFLOP/s",
            f"ceiling, {lm.dtype}, timed between prefills")
    res.add("prefill_tok_s", args.prefill_tokens / prefill_s, "tok/s", f"{args.prefill_tokens} tokens in {prefill_s:.2f} s")
    flops = 2 * sum(p.numel() for n, p in lm.named_parameters() if p.dim() == 2 and "embedding" not in n)
    res.add("prefill_matmul_gflops", flops * args.prefill_tokens / prefill_s / 1e9, "GFLOP/s", "LM matmuls only")

    _, state = lm(inputs_embeds=embeds, logits_to_keep=1)
    token = torch.tensor([7], device=dev)
    copy = copy_case(dev)
    decode_fns = {"ours": lambda: lm.step(token, state), "copy": copy.call}
    if args.peer:
        peer = __import__("cobra_app.bench.peer", fromlist=["transformers_peer"]).transformers_peer(lm)
        peer_prefill_s = median_seconds(lambda: peer(inputs_embeds=embeds, logits_to_keep=1), max(1, args.repeats // 2), 0)
        res.add("peer_prefill_tok_s", args.prefill_tokens / peer_prefill_s, "tok/s", "transformers MambaForCausalLM")
        cache = peer(inputs_embeds=embeds[:, :8], use_cache=True).cache
        decode_fns["peer"] = lambda: peer(token[:, None], cache=cache, use_cache=True)
    decode = interleaved_seconds(decode_fns, args.rounds, args.decode_steps)
    copy_gbs = [copy.rate(t) for t in decode["copy"]]
    ours_ms = [t * 1e3 for t in decode["ours"]]
    res.add("copy_gbs", statistics.median(copy_gbs), "GB/s",
            f"ceiling, read + write, timed between decode steps ({spread(copy_gbs, 'GB/s')})")
    res.add("decode_tok_s", 1e3 / statistics.median(ours_ms), "tok/s",
            f"{statistics.median(ours_ms):.0f} ms per token ({spread(ours_ms, 'ms')})")
    if args.peer:
        peer_ms = [t * 1e3 for t in decode["peer"]]
        res.add("peer_decode_tok_s", 1e3 / statistics.median(peer_ms), "tok/s",
                f"transformers MambaForCausalLM ({spread(peer_ms, 'ms')})")
        del peer, cache, decode_fns
    res.add("state_bytes", state.nbytes, "B", "per conversation, any length")
    res.figures["lm_weight_bytes"] = sum(p.numel() * p.element_size() for p in lm.parameters())


def spread(per_round: list[float], unit: str) -> str:
    """'rounds LO-HI unit': the range of a figure over the rounds of an interleaved measurement."""
    return f"rounds {min(per_round):.0f}-{max(per_round):.0f} {unit}"


@torch.no_grad()
def measure_turns(cobra: Cobra, args: argparse.Namespace, res: Results) -> None:
    """Time to first token per turn: sessions (only the new user turn is read) vs the release's way."""
    from PIL import Image

    from cobra_app.generation import SamplingParams
    from cobra_app.sessions import SessionManager

    manager = SessionManager(cobra, max_context_tokens=1 << 20)  # measures speed, not the product's context rule
    sid = manager.open_session()
    size = cobra.config.vision.image_size
    image = Image.new("RGB", (size, size), (120, 80, 200))
    manager.set_image(sid, image)
    params = SamplingParams(max_new_tokens=args.reply_tokens)
    ours, context = [], []
    for turn in range(args.turns):
        reply = manager.send(sid, f"Question number {turn + 1}: what else do you see in the picture?", params)
        for _ in reply:
            pass
        ours.append(reply.stats.ttft_s)
        context.append(reply.stats.context_tokens)
    release: list[float | None] = [None] * args.turns
    for turn in sorted({0, 1, 3, 7, args.turns - 1} & set(range(args.turns))):
        # the release re-encodes the image and re-reads every token of the conversation before answering
        ids = random_ids(context[turn], cobra.vocab_size, turn).to(cobra.device)  # context counts text tokens
        pixels = {k: v[None] for k, v in cobra.vlm.image_transform(image).items()}
        release[turn] = median_seconds(lambda: cobra.vlm.prefill(ids, cobra.vlm.encode_images(pixels)), 1, 0)
    res.per_turn = {"sessions_ttft_s": ours, "release_ttft_s": release, "context_tokens": context}
    if args.turns >= 2:  # the last turn is compared with turn 2, the first follow-up
        res.add("ttft_turn2_s", ours[1], "s")
        res.add("ttft_last_turn_s", ours[-1], "s", f"turn {args.turns}")
    if args.turns >= 8:
        res.add("release_ttft_turn8_s", release[7], "s", "re-encode + re-read everything")


@torch.no_grad()
def measure_batched_decode(cobra: Cobra, args: argparse.Namespace, res: Results) -> None:
    """Aggregate decode tokens/s with 1, 2, 4, 8 conversations stepped together (their states stacked), the batch
    sizes timed in turns."""
    lm = cobra.vlm.llm
    _, state = lm(random_ids(16, cobra.vocab_size, 1).to(cobra.device))
    steps = {}
    for batch in args.batch_sizes:
        stacked, tokens = MambaState.stack([state] * batch), torch.full((batch,), 7, device=cobra.device)
        steps[str(batch)] = partial(lm.step, tokens, stacked)
    for batch, seconds in interleaved_seconds(steps, args.rounds, args.decode_steps).items():
        res.add(f"batched_decode_{batch}_tok_s", int(batch) / statistics.median(seconds), "tok/s", f"{batch} sessions")


def add_ratios(res: Results) -> dict[str, tuple[float, str]]:
    """The issue's targets as ratios of figures measured in this run: name -> (value, target). Also, without a target,
    transformers' own decode / floor: decode vs transformers is our fraction of the floor divided by that one."""
    f = res.figures
    floor_s = f["lm_weight_bytes"] / (f["copy_gbs"] * 1e9)  # every weight read once at the copy's bandwidth
    ratios = {
        "decode / bandwidth floor": (f["decode_tok_s"] * floor_s, ">= 0.75"),
        "prefill / bf16 matmul ceiling": (f["prefill_matmul_gflops"] / f["matmul_gflops_model_dtype"], ">= 0.50"),
    }
    if "peer_decode_tok_s" in f:
        ratios["decode vs transformers"] = (f["decode_tok_s"] / f["peer_decode_tok_s"], ">= 2")
        ratios["transformers' decode / bandwidth floor"] = (f["peer_decode_tok_s"] * floor_s, "none")
        ratios["prefill vs transformers"] = (f["prefill_tok_s"] / f["peer_prefill_tok_s"], ">= 3")
    if "ttft_last_turn_s" in f:
        ratios["TTFT last turn / turn 2"] = (f["ttft_last_turn_s"] / f["ttft_turn2_s"], "<= 1.25")
    if "release_ttft_turn8_s" in f:
        ratios["release / sessions TTFT at turn 8"] = (f["release_ttft_turn8_s"] / res.per_turn["sessions_ttft_s"][7], ">= 20")
    if "batched_decode_4_tok_s" in f and "batched_decode_1_tok_s" in f:
        ratios["batched decode 4 / 1"] = (f["batched_decode_4_tok_s"] / f["batched_decode_1_tok_s"], ">= 2.5")
    return ratios


def print_table(res: Results, ratios: dict[str, tuple[float, str]]) -> str:
    lines = [f"{'figure':<32} {'value':>12}  unit     note"]
    lines += [f"{name:<32} {value:>12.4g}  {unit:<8} {note}" for name, value, unit, note in res.rows]
    lines += ["", f"{'ratio (same run)':<40} {'value':>8}  target"]
    lines += [f"{name:<40} {value:>8.3g}  {target}" for name, (value, target) in ratios.items()]
    if res.per_turn:
        lines += ["", "turn  context  sessions TTFT s  release TTFT s"]
        for i, (ctx, ours, theirs) in enumerate(zip(res.per_turn["context_tokens"], res.per_turn["sessions_ttft_s"],
                                                     res.per_turn["release_ttft_s"])):
            lines.append(f"{i + 1:>4}  {ctx:>7}  {ours:>15.3f}  {'' if theirs is None else f'{theirs:.3f}':>14}")
    table = "\n".join(lines)
    print(table)
    return table


def plot_ttft(res: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    turns = range(1, len(res.per_turn["sessions_ttft_s"]) + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(turns, res.per_turn["sessions_ttft_s"], "o-", label="Cobra Chat sessions (new tokens only)")
    release = [(t, v) for t, v in zip(turns, res.per_turn["release_ttft_s"]) if v is not None]
    ax.plot(*zip(*release), "s--", label="release: re-encode + re-read all")
    ax.set(xlabel="turn", ylabel="time to first token (s)", yscale="log", title="Time to first token per turn")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:cobra+3b", help="random:<registry id>, a registry id or a path")
    add_model_file_options(parser)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench"))
    parser.add_argument("--prefill-tokens", type=positive_int, default=760)
    parser.add_argument("--decode-steps", type=positive_int, default=4,
                        help="timed decode steps per round and function")
    parser.add_argument("--rounds", type=positive_int, default=6, help="rounds of the interleaved decode measurements")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed calls of image encoding and prefill")
    parser.add_argument("--turns", type=positive_int, default=16,
                        help="turns of the multi-turn chat (its ratios need 2 turns, the release comparison 8)")
    parser.add_argument("--reply-tokens", type=positive_int, default=16)
    parser.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--no-peer", dest="peer", action="store_false", help="skip transformers' MambaForCausalLM")
    parser.add_argument("--no-turns", dest="turns_bench", action="store_false", help="skip the multi-turn chat")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    res = Results()
    cobra = build_model(args.model, args.device, args.dtype, **model_file_options(args))
    res.add("matmul_gflops_fp32", matmul_gflops(torch.float32, args.device), "GFLOP/s", "ceiling, fp32")
    measure_model(cobra, args, res)
    if args.turns_bench:
        measure_turns(cobra, args, res)
    measure_batched_decode(cobra, args, res)
    res.add("peak_rss_gb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "GB", "whole process")
    ratios = add_ratios(res)
    table = print_table(res, ratios)

    args.out.mkdir(parents=True, exist_ok=True)
    info = {**cobra.info(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    (args.out / "bench.json").write_text(json.dumps(
        {"model": info, "figures": res.figures, "per_turn": res.per_turn,
         "ratios": {k: {"value": v, "target": t} for k, (v, t) in ratios.items()}, "table": table}, indent=2))
    if res.per_turn:
        plot_ttft(res, args.out / "ttft_per_turn.png")
    print(f"\nwrote {args.out / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
