"""Load time of a release-layout run at cobra+3b sizes, offline from a local hub cache, with random weights.

    flock /tmp/cobra-heavy.lock python -m cobra_app.bench.load_time --workdir /tmp/cobra3b [--repeats 3]
    flock /tmp/cobra-heavy.lock python -m cobra_app.bench.load_time --workdir /tmp/cobra3b \
        --compare /tmp/old --mmap-compared

The first run builds WORKDIR, kept for the next ones (about 9 GB): `run/` (config.json and
checkpoints/latest-checkpoint.pt holding the projector and the Mamba LLM in bf16) and `hub/`, the hub cache the rest
comes from (the LLM backbone's mamba_ssm config with a stand-in tokenizer, DINOv2-L and SigLIP-SO400M in timm's format
at timm's sizes), all random. Each repeat then runs `cobra_app.load(run, device="cpu", dtype=...)` in a fresh
process with HF_HUB_OFFLINE=1 (the files sit in the page cache after the first read) and reports the wall time of the
call, the process's peak resident memory (memory-mapped file pages it touched included), and a SHA-256 of every loaded
tensor (equal fingerprints: bitwise the same model). `--compare DIR` also times the loader of another checkout, e.g.
the code before a change (`git archive main | tar -x -C DIR`), in turns with this one (repeat by repeat), and prints
the ratio of the medians; `--mmap-compared` memory-maps that checkout's torch.load, so that a loader that builds an
fp32 model first fits in memory (it then reads the checkpoint lazily: the comparison favours it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

TIMED = """
import json, resource, sys, time, hashlib, torch
if {mmap}:
    _load = torch.load
    torch.load = lambda *a, **k: _load(*a, **{{**k, "mmap": True}})
from cobra_app import load
start = time.perf_counter()
cobra = load({run!r}, device="cpu", dtype={dtype!r})
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
digest = hashlib.sha256()
for name, t in cobra.vlm.state_dict().items():
    digest.update(f"{{name}}:{{t.dtype}}:{{tuple(t.shape)}}".encode())
    digest.update(t.contiguous().view(torch.uint8).numpy())
print(json.dumps({{"seconds": seconds, "peak_rss_bytes": peak, "fingerprint": digest.hexdigest(),
                  "parameters": sum(p.numel() for p in cobra.vlm.parameters()), "dtype": str(cobra.vlm.dtype)}}))
"""


def build_workdir(workdir: Path) -> Path:
    """The cobra+3b-sized run and its hub cache (see the module docstring); returns the run directory."""
    import torch

    from cobra_app.bench.release_run import release_checkpoint, write_llm_repo, write_run_dir, write_timm_weights
    from cobra_app.demo.tokenizer import build_demo_tokenizer
    from cobra_app.loading import build_random
    from cobra_app.loading.registry import LLM_BACKBONES, MODELS

    config = MODELS["cobra+3b"].config
    cache = workdir / "hub"
    write_llm_repo(cache, LLM_BACKBONES[config.llm_backbone_id].hf_repo, config.llm, build_demo_tokenizer())
    for seed, branch in enumerate(config.vision.branches):
        write_timm_weights(cache, branch, seed)
    vlm = build_random(config, torch.bfloat16, seed=7)
    run = write_run_dir(workdir / "run", vlm, config.llm_backbone_id, release_checkpoint(vlm))
    (workdir / "READY").write_text("built\n")
    return run


def available_bytes() -> int:
    """MemAvailable of /proc/meminfo: what can be allocated without pushing other processes out."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def time_load(run: Path, cache: Path, code: Path, dtype: str, mmap: bool) -> dict:
    """One load in a fresh process, with the checkout at `code` first on the path."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "PYTHONPATH": str(code)}
    script = TIMED.format(run=str(run), dtype=dtype, mmap=mmap)
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=code, capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the load failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cobra_app.bench.load_time", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, required=True, help="where the run and its hub cache are (built once)")
    p.add_argument("--compare", type=Path, default=None, help="another checkout whose loader is timed in turns")
    p.add_argument("--mmap-compared", action="store_true", help="memory-map the compared checkout's torch.load")
    p.add_argument("--dtype", default="auto", help="the dtype `load` is asked for (auto: bf16 at this size)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--need-gb", type=float, default=18.0,
                   help="refuse to start a load with less memory available than this (the machine is shared)")
    args = p.parse_args(argv)
    if not (args.workdir / "READY").is_file():
        print(f"building the cobra+3b-sized run and hub cache in {args.workdir} ...", flush=True)
        build_workdir(args.workdir)
    checkouts = {"this": (Path(__file__).resolve().parents[2], False)}
    if args.compare is not None:
        checkouts["compared"] = (args.compare.resolve(), args.mmap_compared)
    runs: dict[str, list[dict]] = {name: [] for name in checkouts}
    for i in range(args.repeats):
        for name, (code, mmap) in checkouts.items():
            if available_bytes() < args.need_gb * 1e9:
                print(f"only {available_bytes() / 1e9:.1f} GB available, {args.need_gb} GB needed: stopped")
                return 1
            run = time_load(args.workdir / "run", args.workdir / "hub", code, args.dtype, mmap)
            runs[name].append(run)
            print(f"  {name} ({code}) load {i + 1}: {run['seconds']:.1f} s, peak RSS "
                  f"{run['peak_rss_bytes'] / 1e9:.1f} GB", flush=True)
    summary = {name: {
        "code": str(checkouts[name][0]), "torch_load_mmap_forced": checkouts[name][1], "dtype": rs[0]["dtype"],
        "parameters": rs[0]["parameters"], "median_seconds": round(statistics.median(r["seconds"] for r in rs), 2),
        "seconds": [round(r["seconds"], 2) for r in rs],
        "peak_rss_gb": round(max(r["peak_rss_bytes"] for r in rs) / 1e9, 2),
        "fingerprints": sorted({r["fingerprint"] for r in rs}),
    } for name, rs in runs.items()}
    if args.compare is not None:
        summary["compared_over_this"] = round(summary["compared"]["median_seconds"]
                                              / summary["this"]["median_seconds"], 2)
        summary["same_model"] = summary["this"]["fingerprints"] == summary["compared"]["fingerprints"]
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
