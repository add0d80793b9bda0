"""Speed benchmark: `python -m cobra_app bench [--model random:cobra+3b|PATH] [--dtype bfloat16] [--out DIR]`
(a release-layout run's own files: `--llm DIR`, `--vision-weights DIR`).

Measures in one run, on one model: the machine's ceilings (matmul GFLOP/s in fp32 and in the compute dtype, copy
GB/s), image encoding, prefill and decode speed, the same decode with int8 LM projections and head (CPU), time to
first token per turn over a multi-turn chat with sessions versus the release's way (re-encode the image and re-read
the whole conversation every turn), batched decode across sessions, state size and peak memory, and transformers'
`MambaForCausalLM` on the same weights and dtype as the peer. Prints the machine (CPU, kernel ISA, torch's ISA
settings, the model's precision and why), a table of absolute figures and ratios, writes `bench.json` and
`ttft_per_turn.png` to --out. Every ratio compares figures measured in this run, and the figures it compares are timed
in turns (round by round), not one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from cobra_app.bench.ceilings import copy_case, count_flops, interleaved_seconds, matmul_case, median_seconds
from cobra_app.cli.model_files import add_model_file_options, model_file_options
from cobra_app.model.mamba import MambaLM, MambaState
from cobra_app.model.ops import cpu_kernel
from cobra_app.model.ops.cpu_capability import ISA_ENV, cpu_flags, cpu_name
from cobra_app.model.quantize import quantized_copy
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
    """`random:<registry id>` = random weights at that model's real sizes (demo tokenizer for ids; "auto" stores them
    in bf16 as the released model, whatever its size here); else `load()`."""
    if not spec.startswith(RANDOM_PREFIX):
        return load(spec, device=device, dtype=dtype, llm=llm, vision=vision)
    from cobra_app.demo.tokenizer import build_demo_tokenizer
    from cobra_app.loading import apply_precision, build_random, resolve_device, resolve_precision
    from cobra_app.loading.meta import empty_model, num_parameters
    from cobra_app.loading.registry import MODELS

    config = MODELS[spec.removeprefix(RANDOM_PREFIX)].config
    dev = resolve_device(device)
    precision = resolve_precision("bfloat16" if dtype == "auto" else dtype, dev, num_parameters(empty_model(config)))
    vlm = apply_precision(build_random(config, precision.float_weights, device=dev), precision)
    return Cobra(vlm.eval().requires_grad_(False), build_demo_tokenizer(), spec)


def machine_lines(cobra: Cobra) -> list[str]:
    """What the figures were measured on: CPU, its vector ISA, the kernels' variant, torch's ISA settings, threads,
    and the model's precision with the reason for it."""
    info = cobra.info()
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2", "avx_vnni")))
    torch_isa = [f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ]
    return [
        f"cpu: {cpu_name()}; flags {' '.join(flags) or 'none of avx2/avx512'}; {torch.get_num_threads()} threads",
        f"kernels: {info['cpu_kernels'] or 'n/a'}; {ISA_ENV}={os.environ.get(ISA_ENV, '(unset)')}; torch "
        f"{torch.__version__} on {torch.backends.cpu.get_cpu_capability()} {' '.join(torch_isa)}".rstrip(),
        f"precision: {cobra.vlm.precision.label} ({cobra.vlm.precision.reason}); ops {info['ops']}",
    ]


def streamed_bytes(lm: MambaLM) -> int:
    """Bytes of the LM's parameters and buffers as stored (int8 matrices with their scales) that a decode step reads:
    all but an untied embedding, of which it reads one row."""
    embedding = lm.backbone.embedding.weight
    skip = embedding if lm.lm_head.weight is not embedding else None
    return sum(t.numel() * t.element_size() for t in (*lm.parameters(), *lm.buffers()) if t is not skip)


def random_ids(n: int, vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(2, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def measure_prefill(cobra: Cobra, args: argparse.Namespace, res: Results) -> torch.Tensor:
    """Image encoding and prefill, timed in turns (`interleaved_seconds`) with the fp32 and compute-dtype matmul
    ceilings they are compared with. Returns the prefilled embeddings, (1, prefill_tokens, d_model)."""
    vlm, lm, dev = cobra.vlm, cobra.vlm.llm, cobra.device
    size = vlm.config.vision.image_size
    pixels = {k: torch.randn(1, 3, size, size, device=dev) for k in vlm.image_transform.transforms}
    embeds = lm.embed(random_ids(args.prefill_tokens, cobra.vocab_size, 0).to(dev))
    encode_flops = count_flops(lambda: vlm.encode_images(pixels))
    matmul_flops = 2 * args.prefill_tokens * sum(p.numel() for n, p in lm.named_parameters()
                                                 if p.dim() == 2 and "embedding" not in n)
    ceilings = {"fp32 ceiling": matmul_case(torch.float32, dev)}
    if lm.compute_dtype != torch.float32:
        ceilings["compute ceiling"] = matmul_case(lm.compute_dtype, dev)
    timed = interleaved_seconds(
        {"encode": lambda: vlm.encode_images(pixels), "prefill": lambda: lm(inputs_embeds=embeds, logits_to_keep=1),
         **{name: case.call for name, case in ceilings.items()}},
        args.repeats,
        per_round={"encode": 1, "prefill": 1, "fp32 ceiling": 5, "compute ceiling": 5},  # a matmul: ~0.1 s
    )
    encode_s, prefill_s = statistics.median(timed["encode"]), statistics.median(timed["prefill"])
    for name, case in ceilings.items():
        dtype = torch.float32 if name == "fp32 ceiling" else lm.compute_dtype
        res.add(f"matmul_gflops_{str(dtype).removeprefix('torch.')}", case.rate(statistics.median(timed[name])),
                "GFLOP/s", "ceiling, timed between encodings and prefills")
    res.add("image_encode_s", encode_s, "s", f"{encode_flops / 1e9:.0f} GFLOP ({encode_flops / encode_s / 1e9:.0f} "
                                              "GFLOP/s)")
    res.add("prefill_tok_s", args.prefill_tokens / prefill_s, "tok/s",
            f"{args.prefill_tokens} tokens in {prefill_s:.2f} s")
    res.add("prefill_matmul_gflops", matmul_flops / prefill_s / 1e9, "GFLOP/s", "LM matmuls only")
    res.figures.update(image_encode_gflop=encode_flops / 1e9, prefill_matmul_gflop=matmul_flops / 1e9)
    return embeds


@torch.no_grad()
def measure_decode(cobra: Cobra, args: argparse.Namespace, res: Results, embeds: torch.Tensor) -> None:
    """Decode steps after prefilling `embeds`: ours, an int8 copy's and the transformers peer's, timed in turns with
    the copy whose bandwidth sets the decode floor."""
    lm, dev = cobra.vlm.llm, cobra.device
    _, state = lm(inputs_embeds=embeds, logits_to_keep=1)
    token = torch.tensor([7], device=dev)
    copy = copy_case(dev)
    decode_fns = {"ours": lambda: lm.step(token, state), "copy": copy.call}
    if args.int8:
        int8_lm = quantized_copy(lm)
        decode_fns["int8"] = lambda: int8_lm.step(token, state)
        res.figures["int8_lm_weight_bytes"] = streamed_bytes(int8_lm)
    if args.peer:
        peer = __import__("cobra_app.bench.peer", fromlist=["transformers_peer"]).transformers_peer(lm)
        if args.peer_prefill and lm.compute_dtype == lm.dtype:  # else the peer's bf16 prefill would take hours
            peer_prefill_s = median_seconds(lambda: peer(inputs_embeds=embeds, logits_to_keep=1),
                                            max(1, args.repeats // 2), 0)
            res.add("peer_prefill_tok_s", args.prefill_tokens / peer_prefill_s, "tok/s",
                    "transformers MambaForCausalLM")
        cache = peer(inputs_embeds=embeds[:, :8], use_cache=True).cache
        decode_fns["peer"] = lambda: peer(token[:, None], cache=cache, use_cache=True)
    decode = interleaved_seconds(decode_fns, args.rounds, args.decode_steps)
    copy_gbs = [copy.rate(t) for t in decode["copy"]]
    ours_ms = [t * 1e3 for t in decode["ours"]]
    res.add("copy_gbs", statistics.median(copy_gbs), "GB/s",
            f"ceiling, read + write, timed between decode steps ({spread(copy_gbs, 'GB/s')})")
    res.add("decode_tok_s", 1e3 / statistics.median(ours_ms), "tok/s",
            f"{statistics.median(ours_ms):.0f} ms per token ({spread(ours_ms, 'ms')})")
    if args.int8:
        int8_ms = [t * 1e3 for t in decode["int8"]]
        res.add("int8_decode_tok_s", 1e3 / statistics.median(int8_ms), "tok/s",
                f"int8 projections and head, {statistics.median(int8_ms):.0f} ms per token ({spread(int8_ms, 'ms')})")
        del int8_lm
    if args.peer:
        peer_ms = [t * 1e3 for t in decode["peer"]]
        res.add("peer_decode_tok_s", 1e3 / statistics.median(peer_ms), "tok/s",
                f"transformers MambaForCausalLM ({spread(peer_ms, 'ms')})")
        del peer, cache
    del decode_fns
    res.add("state_bytes", state.nbytes, "B", "per conversation, any length")
    res.figures["lm_weight_bytes"] = streamed_bytes(lm)


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
    fp32_gflops = f["matmul_gflops_float32"]
    ratios = {
        "image encoding / its time at the fp32 matmul ceiling": (f["image_encode_s"] * fp32_gflops
                                                                 / f["image_encode_gflop"], "<= 1.5"),
        "prefill / its matmuls' time at the fp32 ceiling": (fp32_gflops / f["prefill_matmul_gflops"], "<= 1.5"),
        "decode / bandwidth floor": (f["decode_tok_s"] * floor_s, ">= 0.75"),
        "prefill / matmul ceiling (compute dtype)": (f["prefill_matmul_gflops"] / f[compute_ceiling_key(f)], ">= 0.50"),
    }
    if "int8_decode_tok_s" in f:
        ratios["int8 decode vs ours"] = (f["int8_decode_tok_s"] / f["decode_tok_s"], ">= 1.7")
        ratios["int8 decode / its bandwidth floor"] = (f["int8_decode_tok_s"] * f["int8_lm_weight_bytes"]
                                                       / (f["copy_gbs"] * 1e9), "none")
    if "peer_decode_tok_s" in f:
        ratios["decode vs transformers"] = (f["decode_tok_s"] / f["peer_decode_tok_s"], ">= 2")
        ratios["transformers' decode / bandwidth floor"] = (f["peer_decode_tok_s"] * floor_s, "none")
    if "peer_prefill_tok_s" in f:
        ratios["prefill vs transformers"] = (f["prefill_tok_s"] / f["peer_prefill_tok_s"], ">= 3")
    if "ttft_last_turn_s" in f:
        ratios["TTFT last turn / turn 2"] = (f["ttft_last_turn_s"] / f["ttft_turn2_s"], "<= 1.25")
    if "release_ttft_turn8_s" in f:
        ratios["release / sessions TTFT at turn 8"] = (f["release_ttft_turn8_s"] / res.per_turn["sessions_ttft_s"][7], ">= 20")
    if "batched_decode_4_tok_s" in f and "batched_decode_1_tok_s" in f:
        ratios["batched decode 4 / 1"] = (f["batched_decode_4_tok_s"] / f["batched_decode_1_tok_s"], ">= 2.5")
    return ratios


def compute_ceiling_key(figures: dict[str, float]) -> str:
    """The matmul ceiling in the compute dtype (bf16 where it is fast, else fp32)."""
    return next((k for k in figures if k.startswith("matmul_gflops_") and k != "matmul_gflops_float32"),
                "matmul_gflops_float32")


def print_table(res: Results, ratios: dict[str, tuple[float, str]], machine: list[str]) -> str:
    lines = [*machine, "", f"{'figure':<32} {'value':>12}  unit     note"]
    lines += [f"{name:<32} {value:>12.4g}  {unit:<8} {note}" for name, value, unit, note in res.rows]
    lines += ["", f"{'ratio (same run)':<54} {'value':>8}  target"]
    lines += [f"{name:<54} {value:>8.3g}  {target}" for name, (value, target) in ratios.items()]
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
    parser.add_argument("--no-peer-prefill", dest="peer_prefill", action="store_false",
                        help="time transformers' decode only (its 760-token prefill takes minutes on a CPU)")
    add_model_file_options(parser)
    parser.add_argument("--no-int8", dest="int8", action="store_false",
                        help="skip the decode of an int8 copy (CPU, not for a model loaded as int8)")
    parser.add_argument("--no-turns", dest="turns_bench", action="store_false", help="skip the multi-turn chat")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    if torch.device(args.device).type == "cpu" and not cpu_kernel.load_kernel():
        print(f"warning: CPU kernels unavailable, measuring PyTorch ops ({cpu_kernel.load_error()})", file=sys.stderr)
    res = Results()
    cobra = build_model(args.model, args.device, args.dtype, **model_file_options(args))
    loaded_int8 = cobra.vlm.precision.weights == torch.int8
    args.int8 &= cobra.device.type == "cpu" and not loaded_int8
    if args.peer and loaded_int8:
        print("transformers' MambaForCausalLM skipped: it has no int8 weights of this kind to compare with")
        args.peer = False
    machine = machine_lines(cobra)
    print("\n".join(machine), flush=True)
    measure_decode(cobra, args, res, measure_prefill(cobra, args, res))
    if args.turns_bench:
        measure_turns(cobra, args, res)
    measure_batched_decode(cobra, args, res)
    res.add("peak_rss_gb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "GB", "whole process")
    ratios = add_ratios(res)
    table = print_table(res, ratios, machine)

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
