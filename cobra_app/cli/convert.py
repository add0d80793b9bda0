"""`python -m cobra_app convert SOURCE OUT_DIR [--llm DIR|REPO] [--vision-weights DIR] [--dtype float32]`

Writes the self-contained model directory that `load` reads (config.json, model.safetensors with every part, the
vision towers included, and the tokenizer files) from a run in the release layout, or from anything else `load`
accepts (`cobra+3b` from the hub or its cache, a hub path). The result loads with no other file and no network: copy
it to an offline machine and pass it to --model.

--dtype float32 (the default) keeps every weight exactly as it loads; bfloat16 halves the file (norms, conv, A_log,
D and dt bias stay float32, as the model runs them either way). OUT_DIR must be new or empty. The files are written
to a temporary folder beside it and moved into place at the end: an interrupted run leaves no half-written model.

Exit status: 0 written; 1 the source cannot be loaded or OUT_DIR written; 2 bad options or OUT_DIR not empty.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cobra_app.cli.model_files import add_model_file_options, model_file_options


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cobra_app convert",
                                     description="Write a self-contained model directory from a release-layout run.")
    parser.add_argument("source", help="run directory in the release layout (or a registry id, hub path, model dir)")
    parser.add_argument("out_dir", type=Path, help="the model directory to write (new or empty)")
    add_model_file_options(parser)
    parser.add_argument("--dtype", default="float32", help="float32 (default, exact), bfloat16 or float16")
    return parser.parse_args(argv)


def _unusable_out_dir(out: Path) -> str | None:
    if out.exists() and not out.is_dir():
        return f"{out} exists and is not a directory"
    if out.is_dir() and any(out.iterdir()):
        return f"{out} is not empty; choose a new directory (nothing was written)"
    return None


def write_atomically(vlm, tokenizer, out: Path) -> None:
    """`save_model_dir` into a temporary folder beside `out`, then moved to `out`."""
    from cobra_app.loading import save_model_dir

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        save_model_dir(vlm, tokenizer, staging)
        if out.is_dir():
            out.rmdir()  # empty (checked before loading)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if problem := _unusable_out_dir(args.out_dir):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    import torch

    from cobra_app.loading import CheckpointError, ModelUnavailableError, read_model, resolve_device, resolve_precision

    try:
        if resolve_precision(args.dtype, resolve_device("cpu"), 0).weights == torch.int8:
            raise ValueError("int8 is applied when a model is loaded (--dtype int8 there); convert to bfloat16")
    except ValueError as exc:
        print(f"error: --dtype: {exc}", file=sys.stderr)
        return 2
    try:
        vlm, tokenizer = read_model(args.source, device="cpu", dtype=args.dtype, **model_file_options(args))
    except (ModelUnavailableError, CheckpointError, ValueError, OSError) as exc:
        print(f"error: cannot load {args.source!r}: {exc}", file=sys.stderr)
        return 1
    try:
        write_atomically(vlm, tokenizer, args.out_dir)
    except OSError as exc:
        print(f"error: cannot write {args.out_dir} (nothing was left there): {exc}", file=sys.stderr)
        return 1
    size = sum(f.stat().st_size for f in args.out_dir.iterdir())
    print(f"wrote {args.out_dir}: {vlm.config.model_id}, {sum(p.numel() for p in vlm.parameters()) / 1e6:.1f} M "
          f"parameters ({args.dtype}), {size / 1e9:.2f} GB. Load it with --model {args.out_dir} "
          f"(Python: load({str(args.out_dir)!r})).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
