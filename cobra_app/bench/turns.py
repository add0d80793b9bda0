"""Benchmark (not a test): a 16-turn chat about one image, cached sessions versus full recompute.

    python -m cobra_app.bench.turns                       # a tiny random-weight model built in seconds
    python -m cobra_app.bench.turns --model random-small  # a larger random model (64 patches, Mamba 256 x 8)
    python -m cobra_app.bench.turns --model cobra+3b      # or a model directory / hub path

Per turn it prints the tokens the model read and the time taken, both ways:
- cached: `SessionManager.send` - only the new user segment is prefilled on top of the saved state; the reply is
  decoded and its closing ids are fed (the image was encoded once, at the first turn).
- full recompute: what the release and transformer chat demos do - encode the image again, read the image patches
  and the whole conversation from scratch, then decode. It reads the same token ids as the cached session (the
  session's own history), so the two must produce the same reply: the "same" column checks it.
Both decode greedily with the same max_new_tokens, so the difference is the prompt work.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from PIL import Image

from cobra_app.cli.model_files import add_model_file_options, model_file_options
from cobra_app.generation import Decoder, SamplingParams

QUESTIONS = (
    "What is in the image?",
    "What colour is the biggest object?",
    "Is there anything on the left side?",
    "How many objects can you see?",
    "Describe the background.",
    "Which object is closest to the center?",
    "Is there a dog? Answer yes or no.",
    "What shape is the smallest thing?",
    "Compare the two largest objects.",
    "Is anything above the red object?",
    "What would you change in this picture?",
    "Tell me more about the colours.",
    "Is the scene indoors or outdoors?",
    "Which object is on the right?",
    "Summarise the picture in one sentence.",
    "Thank you! Anything else worth noting?",
)

RANDOM_MODELS = {
    # name: (vision backbone id, d_model, n_layer)
    "random-tiny": ("tiny-dinosiglip-32px", 64, 4),
    "random-small": ("small-dinosiglip-64px", 256, 8),
}


def synthetic_image(size: int = 96, seed: int = 0) -> Image.Image:
    """A deterministic RGB picture (gradients and noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([x * 255 // (size - 1), y * 255 // (size - 1), rng.integers(0, 256, (size, size))], -1)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def build_random_model(name: str, seed: int = 0):
    """A Cobra with random weights in the release's architecture, the demo tokenizer and the Zephyr format."""
    from cobra_app.demo.tokenizer import build_demo_tokenizer
    from cobra_app.model.cobra import CobraConfig, CobraVLM
    from cobra_app.model.mamba import MambaConfig
    from cobra_app.model.vision import VISION_BACKBONES
    from cobra_app.pipeline import Cobra

    vision, d_model, n_layer = RANDOM_MODELS[name]
    tokenizer = build_demo_tokenizer()
    config = CobraConfig(model_id=name, arch_specifier="no-align+fused-gelu-mlp", vision=VISION_BACKBONES[vision],
                         llm=MambaConfig(d_model=d_model, n_layer=n_layer, vocab_size=len(tokenizer)),
                         llm_max_length=2048, prompt_format="zephyr")
    torch.manual_seed(seed)
    vlm = CobraVLM(config)
    vlm.llm.init_weights(torch.Generator().manual_seed(seed))
    return Cobra(vlm.eval().requires_grad_(False), tokenizer, f"{name} (random weights)")


def full_recompute_turn(cobra, image, prompt_ids: list[int], params: SamplingParams):
    """The stateless way: encode the image, read patches + the whole conversation, decode.
    Returns (reply ids, tokens read, seconds to the first token, seconds in all)."""
    t0 = time.perf_counter()
    with torch.no_grad():
        embeds = cobra.encode_image(image)
        logits, state = cobra.prefill(torch.tensor([prompt_ids], device=cobra.device), embeds, None)
    decoder = Decoder(cobra, logits[0, -1], state, params, cobra.turns.eos_id, history_ids=prompt_ids,
                      vocab_size=cobra.vocab_size)
    ttft = None
    for _ in decoder:
        ttft = ttft if ttft is not None else time.perf_counter() - t0
    tokens = decoder.result.token_ids
    read = embeds.shape[1] + len(prompt_ids) + max(len(tokens) - 1, 0)
    return tokens, read, ttft or 0.0, time.perf_counter() - t0


def run(cobra, image, turns: int, params: SamplingParams, out=sys.stdout) -> dict:
    from cobra_app.sessions import SessionManager

    manager = SessionManager(cobra, max_context_tokens=1 << 20)
    sid = manager.open_session()
    cobra.generate(image, "warm up", max_new_tokens=2)  # first-call overheads out of the timings
    t0 = time.perf_counter()
    manager.set_image(sid, image)
    set_image_s = time.perf_counter() - t0
    info = cobra.info()
    print(f"model {info['model_id']} from {info['source']}: {info['parameters'] / 1e6:.1f} M parameters, "
          f"{info['device']}, {info['dtype']}, ops {info['ops']}, state {info['state_bytes'] / 1e6:.2f} MB", file=out)
    print(f"{turns} turns, greedy, max_new_tokens={params.max_new_tokens}; set_image (encode once + read the "
          f"patches) took {set_image_s * 1000:.0f} ms", file=out)
    header = (f"{'turn':>4} {'context':>7} | {'cached: read':>12} {'1st tok':>8} {'time':>8} | "
              f"{'full: read':>10} {'1st tok':>8} {'time':>8} | {'speedup':>7} {'same':>4}")
    print(header, file=out)
    print("-" * len(header), file=out)
    totals = {"cached_tokens": 0, "cached_s": 0.0, "full_tokens": 0, "full_s": 0.0, "same": 0}
    session = manager.registry.peek(sid)
    for i in range(turns):
        reply = manager.send(sid, QUESTIONS[i % len(QUESTIONS)], params)
        for _ in reply:
            pass
        stats = reply.stats
        turn = session.exchanges[-1]
        ids = manager.token_ids(sid)
        prompt = ids[: len(ids) - len(turn.reply_ids)]
        full_ids, full_read, full_ttft, full_s = full_recompute_turn(cobra, image, prompt, params)
        same = full_ids == turn.generated_ids
        cached_read = stats.processed_tokens + (stats.image_tokens if i == 0 else 0)  # turn 1: the patches too
        cached_s = stats.total_s + (set_image_s if i == 0 else 0.0)
        cached_ttft = stats.ttft_s + (set_image_s if i == 0 else 0.0)
        totals["cached_tokens"] += cached_read
        totals["cached_s"] += cached_s
        totals["full_tokens"] += full_read
        totals["full_s"] += full_s
        totals["same"] += same
        print(f"{i + 1:>4} {stats.context_tokens:>7} | {cached_read:>12} {cached_ttft * 1000:>6.0f}ms "
              f"{cached_s * 1000:>6.0f}ms | {full_read:>10} {full_ttft * 1000:>6.0f}ms {full_s * 1000:>6.0f}ms | "
              f"{full_s / cached_s:>6.1f}x {'yes' if same else 'NO':>4}", file=out)
    print("-" * len(header), file=out)
    print(f"total: cached read {totals['cached_tokens']} tokens in {totals['cached_s']:.2f} s; full recompute read "
          f"{totals['full_tokens']} tokens in {totals['full_s']:.2f} s "
          f"({totals['full_tokens'] / totals['cached_tokens']:.1f}x the tokens, "
          f"{totals['full_s'] / totals['cached_s']:.1f}x the time); same replies: {totals['same']}/{turns}", file=out)
    print("cache: " + ", ".join(f"{k}={v}" for k, v in manager.stats().items()), file=out)
    return totals


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cobra_app.bench.turns", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="random-tiny",
                   help=f"{', '.join(RANDOM_MODELS)} (random weights, offline) or anything cobra_app.load accepts")
    add_model_file_options(p)
    p.add_argument("--image", default=None, help="image file (default: a synthetic picture)")
    p.add_argument("--turns", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model in RANDOM_MODELS:
        cobra = build_random_model(args.model)
        if args.device not in ("auto", "cpu") or args.dtype != "auto":
            from cobra_app.loading import apply_precision, resolve_device, resolve_precision

            device = resolve_device(args.device)
            apply_precision(cobra.vlm, resolve_precision(args.dtype, device, 0)).to(device)
    else:
        from cobra_app.pipeline import load

        cobra = load(args.model, args.device, args.dtype, **model_file_options(args))
    image = Image.open(args.image).convert("RGB") if args.image else synthetic_image()
    run(cobra, image, args.turns, SamplingParams(max_new_tokens=args.max_new_tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
