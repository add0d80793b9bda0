"""CUDA kernels vs the PyTorch reference, on random inputs: `python -m cobra_app.bench.cuda_check [--out FILE]`.

Needs a CUDA device with `mamba-ssm` and `causal-conv1d` installed. Each check is measured against a bound:
- each operator, kernels vs torch ops, continuing from a saved state (the scan also from a zero one, where the
  start-state correction is skipped), at chunk lengths 1 (decode), 3 (< d_conv), 300 and 128, 256, 2048 (lengths at
  which the kernels use 16-byte vector loads), the scan reading the conv's output as the model's mixer does;
- a small MambaLM, kernels vs torch ops: full passes of 128, 256 and 2048 tokens, a continuation from a non-zero state
  followed by decode steps, the same continuation against the kernels' own full pass, and decode steps replayed from
  CUDA graphs against eager ones;
- CUDA graphs captured for batch sizes 1..MAX_BATCH while other threads sample and allocate on the GPU (what
  `BatchedStepper` does at start-up while a server may already be answering), then concurrent greedy decodes through
  `BatchedStepper` against each decoded alone;
- at cobra+3b sizes (random weights, bf16): the GPU memory peak of a 2048-token prefill from a zero and from a
  non-zero state, and the memory the graphs for batch sizes 1..MAX_BATCH keep.
Prints each row as it is measured and writes the table as Markdown (default docs/CUDA_CHECK.md). The check functions
take the operators, the device and the lengths as parameters: tests run them on the CPU with stand-in kernels.
"""

from __future__ import annotations

import argparse
import sys
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from cobra_app.generation.batching import BatchedStepper
from cobra_app.model.mamba import MambaConfig, MambaLM, MambaState
from cobra_app.model.ops import TORCH_OPS, MambaOps, cuda_kernel_ops

# Relative error bounds: fp32 kernels reorder sums (1e-4); bf16 model outputs carry bf16 rounding (3e-2).
BOUNDS = {torch.float32: 1e-4, torch.bfloat16: 3e-2}
OP_LENGTHS = (1, 3, 128, 256, 300, 2048)
MODEL_LENGTHS = (128, 256, 2048)
MAX_BATCH = 8  # SessionManager's default
SAMPLER_THREADS = 3
# GPU memory above the weights: the 2048-token prefill (the unblocked start-state correction alone allocated three
# [1, 5120, 2048, 16] fp32 tensors, 0.67 GB each, per layer) and the graphs of batch sizes 1..8 (static states of
# 24 MB per sequence, in and out, plus their pools) must fit next to the 7 GB model on a 24 GB GPU.
PREFILL_BOUND_MIB = 1024
GRAPHS_BOUND_MIB = 4096
SMALL = MambaConfig(d_model=256, n_layer=4, vocab_size=1000)


@dataclass(frozen=True)
class Row:
    """One check: `value` (a relative error, or MiB) must not exceed `bound`."""

    name: str
    value: float
    bound: float
    unit: str = ""  # "" for a relative error

    @property
    def ok(self) -> bool:
        return self.value <= self.bound

    def cells(self) -> str:
        fmt = (lambda v: f"{v:.0f} {self.unit}") if self.unit else (lambda v: f"{v:.2e}")
        return f"| {self.name} | {fmt(self.value)} | {fmt(self.bound)} | {'yes' if self.ok else 'NO'} |"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def small_lm(kernels: MambaOps, device: str, dtype: torch.dtype) -> MambaLM:
    lm = MambaLM(SMALL, device=device).init_weights(torch.Generator(device=device).manual_seed(0)).cast(dtype)
    lm.eval().requires_grad_(False).ops_override = kernels
    return lm


def op_cases(kernels: MambaOps, device: str, lengths=OP_LENGTHS) -> list[Row]:
    """Each operator, kernels vs torch ops. The conv's input is a channel slice of a [B, L, 2D] projection, as in the
    mixer, and the scan reads the kernels' conv output."""
    g = torch.Generator(device=device).manual_seed(0)
    Bn, D, N, K = 2, 64, 16, 4
    bound = BOUNDS[torch.float32]

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, generator=g)

    rows = []
    for L in lengths:
        x = randn(Bn, L, 2 * D).transpose(1, 2)[:, :D]  # [B, D, L], as the mixer splits in_proj's output
        w, b, conv_state = randn(D, K), randn(D), randn(Bn, D, K)
        (u, conv_k), (u_t, conv_t) = (ops.causal_conv1d(x, w, b, conv_state) for ops in (kernels, TORCH_OPS))
        rows.append(Row(f"causal_conv1d L={L} (non-zero start)", max(rel_err(u, u_t), rel_err(conv_k, conv_t)),
                        bound))
        scan_in = dict(u=u, delta=randn(Bn, D, L), A=-torch.rand(D, N, device=device, generator=g) * 4,
                       B=randn(Bn, N, L), C=randn(Bn, N, L), D=randn(D), z=randn(Bn, D, L), delta_bias=randn(D))
        for start, s0 in (("zero", torch.zeros(Bn, D, N, device=device)), ("non-zero", randn(Bn, D, N))):
            (yk, sk), (yt, st) = (ops.selective_scan(**scan_in, ssm_state=s0) for ops in (kernels, TORCH_OPS))
            err = max(rel_err(yk, yt), rel_err(sk, st))
            rows.append(Row(f"selective_scan L={L} ({start} start) on the conv's output", err, bound))
    return rows


@torch.no_grad()
def model_cases(kernels: MambaOps, device: str, lengths=MODEL_LENGTHS, steps: int = 10) -> list[Row]:
    """A small MambaLM (fp32 and bf16), kernels vs torch ops: full passes, continuation + decode steps, CUDA graphs."""
    rows = []
    head, tail = max(lengths), min(lengths)  # the continuation: `tail` tokens on top of `head`, then the steps
    for dtype in (torch.float32, torch.bfloat16):
        lm, name, bound = small_lm(kernels, device, dtype), str(dtype).removeprefix("torch."), BOUNDS[dtype]
        ids = torch.randint(0, SMALL.vocab_size, (2, head + tail + steps), device=device,
                            generator=torch.Generator(device=device).manual_seed(1))
        for L in lengths:
            full = {ops.name: with_ops(lm, ops, lambda: lm(ids[:, :L])[0]) for ops in (kernels, TORCH_OPS)}
            rows.append(Row(f"MambaLM {name}: full pass L={L}", rel_err(full[kernels.name], full["torch"]), bound))
        cont = {ops.name: with_ops(lm, ops, lambda: continued(lm, lm.eager_step, ids, head, tail))
                for ops in (kernels, TORCH_OPS)}
        kernels_full = with_ops(lm, kernels, lambda: lm(ids)[0])
        rows.append(Row(f"MambaLM {name}: {tail} tokens after {head}, then {steps} steps, vs torch",
                        rel_err(cont[kernels.name], cont["torch"]), bound))
        rows.append(Row(f"MambaLM {name}: the same, vs the kernels' full pass", rel_err(cont[kernels.name],
                                                                                      kernels_full), bound))
        graphed = with_ops(lm, kernels, lambda: continued(lm, lm.step, ids, head, tail))  # lm.step replays graphs
        rows.append(Row(f"MambaLM {name}: CUDA-graph decode steps vs eager steps",
                        rel_err(graphed[:, -steps:], cont[kernels.name][:, -steps:]), bound))
    return rows


def with_ops(lm: MambaLM, ops: MambaOps, fn):
    lm.ops_override = ops
    return fn()


def continued(lm: MambaLM, step, ids: torch.Tensor, head: int, tail: int) -> torch.Tensor:
    """Logits [B, T, V] of ids[:, :head], then ids[:, head:head + tail] on top of its state, then one `step` per
    remaining token."""
    first, state = lm(ids[:, :head])
    second, state = lm(ids[:, head : head + tail], state=state)
    logits = [first, second]
    for t in range(head + tail, ids.shape[1]):
        step_logits, state = step(ids[:, t], state)
        logits.append(step_logits[:, None])
    return torch.cat(logits, dim=1)


def sample_until(stop: threading.Event, device: str, seed: int, errors: list[BaseException]) -> None:
    """A reply's sampling outside the model lock: softmax and multinomial on the device, and fresh allocations."""
    g = torch.Generator(device=device).manual_seed(seed)
    try:
        while not stop.is_set():
            logits = torch.randn(1, SMALL.vocab_size, device=device, generator=g)
            torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=g)
    except BaseException as exc:  # noqa: BLE001 - reported as a failed check
        errors.append(exc)


@torch.no_grad()
def graph_cases(kernels: MambaOps, device: str, max_batch: int = MAX_BATCH, decodes: int = 6,
                steps: int = 12) -> list[Row]:
    """Graphs for batch sizes 1..max_batch captured while SAMPLER_THREADS threads sample on the device, then
    `decodes` concurrent greedy decodes through `BatchedStepper` against each one decoded alone with eager steps."""
    lm, bound = small_lm(kernels, device, torch.float32), BOUNDS[torch.float32]
    model_lock, stop, errors = threading.RLock(), threading.Event(), []
    samplers = [threading.Thread(target=sample_until, args=(stop, device, i, errors)) for i in range(SAMPLER_THREADS)]
    for t in samplers:
        t.start()
    try:
        stepper = BatchedStepper(lm, max_batch=max_batch, model_lock=model_lock)  # captures 1..max_batch
    finally:
        stop.set()
        for t in samplers:
            t.join()
    if errors:
        raise RuntimeError(f"a sampling thread failed during capture: {errors[0]!r}") from errors[0]
    missing = set(range(1, max_batch + 1)) - set(stepper.graph_batch_sizes)
    rows = [Row(f"CUDA graphs captured for batch sizes 1..{max_batch} while {SAMPLER_THREADS} threads sample "
                "(sizes missing)", len(missing), 0, "sizes")]
    prompts = torch.randint(0, SMALL.vocab_size, (decodes, 40), device=device,
                            generator=torch.Generator(device=device).manual_seed(2))
    batched: dict[int, torch.Tensor] = {}

    def decode(i: int) -> None:
        batched[i] = greedy(lm, stepper.step, prompts[i], steps, model_lock)

    threads = [threading.Thread(target=decode, args=(i,)) for i in range(decodes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    err = max(rel_err(batched[i], greedy(lm, lm.eager_step, prompts[i], steps)) for i in range(decodes))
    rows.append(Row(f"{decodes} concurrent greedy decodes through BatchedStepper (graphs) vs each alone (eager)",
                    err, bound))
    return rows


def greedy(lm: MambaLM, step, prompt: torch.Tensor, steps: int, model_lock=None) -> torch.Tensor:
    """Logits [steps, V] of a greedy decode of `prompt` [T] with `step`, the prefill under `model_lock`."""
    with torch.no_grad():
        with model_lock or nullcontext():
            logits, state = lm(prompt[None])
        token, out = logits[:, -1].argmax(-1), []
        for _ in range(steps):
            logits, state = step(token, state)
            out.append(logits[0])
            token = logits.argmax(-1)
    return torch.stack(out)


@torch.no_grad()
def memory_cases(kernels: MambaOps, max_batch: int = MAX_BATCH) -> list[Row]:
    """At cobra+3b sizes on CUDA: memory peaks of a 2048-token prefill and the graphs' memory, in MiB."""
    from cobra_app.loading import build_random
    from cobra_app.loading.registry import MODELS

    config = MODELS["cobra+3b"].config
    lm = build_random(config, torch.bfloat16, device="cuda").llm.eval().requires_grad_(False)
    lm.ops_override = kernels
    L = config.llm_max_length
    ids = torch.randint(0, config.llm.vocab_size, (1, 2 * L), device="cuda")
    state = MambaState.zeros(config.llm, 1, "cuda", lm.dtype)
    rows = []
    for start in ("zero", "non-zero"):
        peak, (_, next_state) = peak_mib(lambda: lm(ids[:, :L] if start == "zero" else ids[:, L:], state=state,
                                                    logits_to_keep=1))
        rows.append(Row(f"cobra+3b bf16: memory peak of a {L}-token prefill ({start} start)", peak,
                        PREFILL_BOUND_MIB, "MiB"))
        state = next_state
    rows.append(Row(f"cobra+3b bf16: memory kept by the CUDA graphs of batch sizes 1..{max_batch}",
                    kept_mib(lambda: lm.capture_step_graphs(range(1, max_batch + 1))), GRAPHS_BOUND_MIB, "MiB"))
    return rows


def peak_mib(fn):
    """(MiB that fn's peak adds to the memory allocated before it, fn's result)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20, result


def kept_mib(fn) -> float:
    """MiB that fn leaves reserved once the allocator's free cache is released (graph pools stay reserved)."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_reserved()
    fn()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return (torch.cuda.memory_reserved() - base) / 2**20


def report(rows: list[Row], device: str) -> str:
    """docs/CUDA_CHECK.md: the device and versions, then the table."""
    lines = ["| check | measured | bound | ok |", "|---|---|---|---|", *(row.cells() for row in rows)]
    return (f"# CUDA kernels vs PyTorch ops\n\nDevice: {device}.\n"
            f"Reproduce: `python -m cobra_app.bench.cuda_check` (what each row checks: its module docstring).\n\n"
            + "\n".join(lines) + "\n")


def device_line() -> str:
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("torch", "mamba-ssm", "causal-conv1d"))
    return f"{torch.cuda.get_device_name()}, CUDA {torch.version.cuda}; {versions}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/CUDA_CHECK.md"))
    args = parser.parse_args(argv)
    kernels = cuda_kernel_ops() if torch.cuda.is_available() else None
    if kernels is None:
        print("needs a CUDA device with mamba-ssm and causal-conv1d importable", file=sys.stderr)
        return 2
    rows = []
    for group in (lambda: op_cases(kernels, "cuda"), lambda: model_cases(kernels, "cuda"),
                  lambda: graph_cases(kernels, "cuda"), lambda: memory_cases(kernels)):
        for row in group():
            print(row.cells(), flush=True)  # rows survive a crash or a time limit
            rows.append(row)
    args.out.write_text(report(rows, device_line()))
    return 0 if all(row.ok for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
