"""The compiled CPU selective scan (`cobra_app.model.ops.cpu_kernel`) against the PyTorch and naive references.

Every kernel variant this CPU can run (AVX-512, AVX2, baseline: the `isa` fixture) is tested. Tolerances:
- forward, fp32: rtol = atol = 1e-5 against `torch_ops` and the fp64 naive recurrence (as test_ops.py);
- bf16/fp16 outputs: one ulp of the output dtype (the fp32 results agree to ~1e-6, then round);
- backward: max |g - g_ref| <= 1e-4 * max |g_ref| for every input, g_ref = fp32 autograd through `torch_ops`
  (measured: ~1e-6).
When the kernel cannot be built here the tests skip with the build error, or fail when CI=true
(tests/model/conftest.py). The projections (linear_cpu.cpp) are tested in test_linear_cpu.py.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cobra_app.model.mamba import LayerState, MambaConfig, MambaLM, MambaState
from cobra_app.model.ops import TORCH_OPS, cpu_kernel, get_ops, torch_ops
from cobra_app.model.ops.torch_ops import dequantize
from cobra_app.model.quantize import quantize_lm_
from tests.model import test_mamba as tm
from tests.model.test_ops import naive_scan, random_scan_inputs

NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "ssm_state"]
GRAD_RTOL = 1e-4


def scan_args(seed: int, Bsz: int, Dn: int, L: int, N: int, nonzero_start: bool = True) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    inputs = random_scan_inputs(g, Bsz=Bsz, Dn=Dn, L=L, N=N)
    s0 = torch.randn(Bsz, Dn, N, generator=g) if nonzero_start else torch.zeros(Bsz, Dn, N)
    return [*inputs.values(), s0]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


# (Bsz, Dn, L, N, nonzero_start): tiny, zero start, L = 1 (the one-step kernel: channels in vector blocks, partial
# blocks, batches, N = 32, odd N), batch > 1 with N = 16, odd N, N = 32.
CASES = [
    (2, 3, 7, 4, False),
    (2, 3, 7, 4, True),
    (1, 5, 1, 16, True),
    (3, 37, 1, 16, True),
    (2, 21, 1, 32, True),
    (2, 19, 1, 13, False),
    (3, 4, 33, 16, True),
    (2, 3, 9, 13, True),
    (1, 2, 10, 32, True),
]


@pytest.mark.parametrize("case", CASES)
def test_forward_equals_torch_and_naive(isa, case):
    *shape, nonzero = case
    args = scan_args(1, *shape, nonzero_start=nonzero)
    y, s = cpu_kernel.selective_scan(*args)
    y_ref, s_ref = torch_ops.selective_scan(*args)
    y_naive, s_naive = naive_scan(*args)
    assert y.dtype == torch.float32 and s.dtype == torch.float32 and s.shape == args[-1].shape
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y.double(), y_naive, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s.double(), s_naive, rtol=1e-5, atol=1e-5)


def test_long_chunk_equals_naive(isa):
    """L = 300 (the naive loop is the bottleneck here) and L = 1000, across the reference's 256-step blocks."""
    args = scan_args(2, 2, 3, 300, 8)
    y, s = cpu_kernel.selective_scan(*args)
    y_naive, s_naive = naive_scan(*args)
    torch.testing.assert_close(y.double(), y_naive, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s.double(), s_naive, rtol=1e-5, atol=1e-5)
    args = scan_args(3, 2, 8, 1000, 16)
    y, s = cpu_kernel.selective_scan(*args)
    y_ref, s_ref = torch_ops.selective_scan(*args)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(isa, dtype):
    """bf16/fp16 u, delta, z, B, C (as the bf16 model passes them): fp32 math, y in u's dtype, fp32 state."""
    args = scan_args(4, 2, 6, 40, 16)
    for i in (0, 1, 3, 4, 6):
        args[i] = args[i].to(dtype)
    y, s = cpu_kernel.selective_scan(*args)
    y_ref, s_ref = torch_ops.selective_scan(*args)
    assert y.dtype == dtype and s.dtype == torch.float32
    ulp = torch.finfo(dtype).eps
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=ulp, atol=ulp * 1e-2)
    torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=1e-5)
    y_naive, _ = naive_scan(*args)
    torch.testing.assert_close(y.double(), y_naive, rtol=ulp, atol=ulp * 1e-2)


def test_mixed_dtypes_and_strided_views(isa):
    """The mixer's layout: delta, z and B, C are transposed views; u bf16 with fp32 delta takes the fp32 path."""
    Bsz, Dn, L, N = 2, 5, 11, 16
    args = scan_args(5, Bsz, Dn, L, N)
    u, delta, A, B, C, D, z, bias, s0 = args

    def time_major(x):  # same values, laid out [B, L, C] as the projections produce them
        return x.transpose(1, 2).contiguous().transpose(1, 2)

    z_view = time_major(torch.cat([u, z], dim=1))[:, Dn:]  # like `xz.chunk(2, dim=1)`
    views = [u, time_major(delta), A, time_major(B), time_major(C), D, z_view, bias, s0]
    assert not views[1].is_contiguous() and not views[3].is_contiguous() and not views[6].is_contiguous()
    y, s = cpu_kernel.selective_scan(*views)
    y_ref, s_ref = torch_ops.selective_scan(*args)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=1e-5)
    mixed = [u.bfloat16(), *args[1:]]
    y, s = cpu_kernel.selective_scan(*mixed)
    y_ref, s_ref = torch_ops.selective_scan(*mixed)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=2**-8, atol=1e-5)
    torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=1e-5)


def test_state_passed_in_is_not_modified(kernel_ops):
    args = scan_args(6, 1, 3, 5, 16)
    before = args[-1].clone()
    _, s = cpu_kernel.selective_scan(*args)
    assert torch.equal(args[-1], before) and s.data_ptr() != args[-1].data_ptr()


def grads(op, args: list[torch.Tensor], y_weight: torch.Tensor | None, s_weight: torch.Tensor | None):
    """Gradients of sum(y * y_weight) + sum(state * s_weight) for every input of `op` (-> (y, state)); a None weight:
    that output unused (an input it leaves untouched gets None)."""
    leaves = [a.detach().clone().requires_grad_() for a in args]
    y, s = op(*leaves)
    loss = 0.0
    if y_weight is not None:
        loss = loss + (y.float() * y_weight).sum()
    if s_weight is not None:
        loss = loss + (s * s_weight).sum()
    loss.backward()
    return [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("case", CASES + [(2, 300, 40, 16, True)])  # the last one spans several channel blocks
def test_backward_equals_autograd_of_reference(isa, case):
    *shape, nonzero = case
    args = scan_args(7, *shape, nonzero_start=nonzero)
    g = torch.Generator().manual_seed(8)
    y_weight = torch.randn(args[0].shape, generator=g)
    s_weight = torch.randn(args[-1].shape, generator=g)
    got = grads(cpu_kernel.selective_scan, args, y_weight, s_weight)
    ref = grads(torch_ops.selective_scan, args, y_weight, s_weight)
    for name, a, b in zip(NAMES, got, ref, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert rel_err(a, b) <= GRAD_RTOL, (name, rel_err(a, b))


@pytest.mark.parametrize("which", ["y", "state"])
def test_backward_with_one_output_used(isa, which):
    """Only y, or only the final state, reaches the loss (the other output's gradient is None)."""
    args = scan_args(9, 2, 4, 12, 16)
    weights = (torch.randn(args[0].shape), None) if which == "y" else (None, torch.randn(args[-1].shape))
    got = grads(cpu_kernel.selective_scan, args, *weights)
    ref = grads(torch_ops.selective_scan, args, *weights)
    for name, a, b in zip(NAMES, got, ref, strict=True):
        if b is None:  # the reference's graph does not reach it (z and D do not affect the state): zero here
            assert not a.any(), name
        else:
            assert rel_err(a, b) <= GRAD_RTOL, (name, rel_err(a, b))


def test_backward_bf16_inputs(kernel_ops):
    """Gradients come back in each input's dtype and match the reference up to bf16 rounding."""
    args = scan_args(10, 2, 4, 20, 16)
    for i in (0, 1, 3, 4, 6):
        args[i] = args[i].bfloat16()
    w = torch.randn(args[0].shape)
    got = grads(cpu_kernel.selective_scan, args, w, None)
    ref = grads(torch_ops.selective_scan, args, w, None)
    for name, a, b, x in zip(NAMES, got, ref, args, strict=True):
        assert a.dtype == x.dtype, name
        assert rel_err(a, b) <= 2e-2, (name, rel_err(a, b))


def same_at_one_and_many_threads(compute) -> bool:
    """Whether `compute()` (-> a list of tensors) gives equal tensors on one thread and on several."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = compute()
        torch.set_num_threads(max(2, threads))
        many = compute()
    finally:
        torch.set_num_threads(threads)
    return all(torch.equal(a, b) for a, b in zip(one, many, strict=True))


def test_results_do_not_depend_on_thread_count(kernel_ops):
    args = scan_args(11, 3, 300, 17, 16)
    w = torch.randn(args[0].shape)
    assert same_at_one_and_many_threads(
        lambda: [*cpu_kernel.selective_scan(*args), *grads(cpu_kernel.selective_scan, args, w, None)])


def test_uncovered_inputs_fall_back_to_torch(kernel_ops):
    """fp64 (gradient checks) runs the PyTorch reference in fp64, so gradcheck still applies."""
    args = [a.double().requires_grad_() for a in scan_args(12, 1, 2, 4, 3)]
    y, _ = cpu_kernel.selective_scan(*args)
    assert y.dtype == torch.float64
    assert torch.autograd.gradcheck(lambda *a: cpu_kernel.selective_scan(*a)[0], tuple(args))


def test_build_failure_falls_back_to_torch_ops(tmp_path):
    """No working compiler (fresh extension cache, CXX=false): no kernel ops, get_ops('cpu') gives the PyTorch ops."""
    false = shutil.which("false")
    if false is None:
        pytest.skip("no `false` executable to stand in for a broken compiler")
    root = Path(__file__).resolve().parents[2]
    code = (
        "from cobra_app.model.ops import TORCH_OPS, cpu_kernel, get_ops\n"
        "assert cpu_kernel.cpu_kernel_ops() is None and get_ops('cpu') is TORCH_OPS\n"
        "assert cpu_kernel.load_error()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "COBRA_OPS"}
    env.update(
        CXX=false,
        TORCH_EXTENSIONS_DIR=str(tmp_path),
        PYTHONPATH=os.pathsep.join([str(root), env.get("PYTHONPATH", "")]),
    )
    subprocess.run([sys.executable, "-c", code], env=env, cwd=root, check=True, timeout=300)


def test_get_ops_selects_kernel_on_cpu(kernel_ops, monkeypatch):
    monkeypatch.delenv("COBRA_OPS", raising=False)
    assert get_ops("cpu") is kernel_ops and kernel_ops.name == "cpu-kernel"
    assert get_ops("cpu", prefer_kernels=False) is TORCH_OPS
    monkeypatch.setenv("COBRA_OPS", "torch")
    assert get_ops("cpu") is TORCH_OPS


# The MambaLM with the kernel selected: test_mamba.py's continuation and training tests, run here again.


@pytest.fixture
def kernel_selected(kernel_ops, monkeypatch):
    monkeypatch.delenv("COBRA_OPS", raising=False)
    assert tm.tiny_lm().ops is kernel_ops
    return kernel_ops


@pytest.mark.parametrize("seed", range(4))
def test_lm_continuation_fp32_with_kernel(kernel_selected, seed):
    tm.test_continuation_equals_single_pass_fp32(seed)


def test_lm_continuation_bf16_step_batch_prefix_with_kernel(kernel_selected):
    tm.test_continuation_bf16_within_rounding_bound()
    tm.test_step_equals_forward()
    tm.test_batched_equals_single_and_stack_roundtrip()
    tm.test_prefix_embeddings_then_tokens()
    tm.test_state_passed_in_is_never_modified()
    tm.test_training_gradients_reach_every_parameter()


def test_lm_kernel_equals_torch_ops(kernel_selected):
    """Same logits, states and parameter gradients as the PyTorch operators."""
    ids = torch.randint(0, tm.TINY.vocab_size, (2, 40), generator=torch.Generator().manual_seed(13))
    results = []
    for ops in (kernel_selected, TORCH_OPS):
        lm = tm.tiny_lm()
        lm.ops_override = ops
        logits, state = lm(ids[:, :-1])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
        results.append((logits.detach(), state, {n: p.grad for n, p in lm.named_parameters()}))
    (logits, state, grads_k), (logits_ref, state_ref, grads_ref) = results
    assert tm.rel_err(logits, logits_ref) <= 1e-5
    assert state.max_abs_diff(state_ref) <= 1e-5
    for name, g in grads_k.items():
        assert tm.rel_err(g, grads_ref[name]) <= GRAD_RTOL, name


def test_bf16_decode_with_the_kernel_matches_torch_ops(kernel_selected):
    """Greedy decoding in bf16: the kernel path's logits stay within the bf16 bound of the PyTorch operators."""
    ids = torch.randint(0, tm.TINY.vocab_size, (2, 12), generator=torch.Generator().manual_seed(5))
    results = []
    for ops in (kernel_selected, TORCH_OPS):
        lm = tm.tiny_lm().cast(torch.bfloat16)
        lm.ops_override = ops
        with torch.no_grad():
            _, state = lm(ids)
            token, steps = ids[:, -1], []
            for _ in range(6):
                logits, state = lm.step(token, state)
                steps.append(logits)
                token = logits.argmax(-1)
        results.append(torch.stack(steps))
    assert tm.rel_err(*results) <= 1e-2


def _prefill_then_steps(lm: MambaLM, ids: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Logits of a prefill of `ids` [B, L] then one decode step per column of `steps` [B, S] (teacher-forced)."""
    with torch.no_grad():
        logits, state = lm(ids, logits_to_keep=1)
        out = [logits[:, -1]]
        for token in steps.unbind(1):
            logits, state = lm.step(token, state)
            out.append(logits)
    return torch.stack(out, dim=1)


def _with_matrices(lm: MambaLM, values: dict[str, torch.Tensor]) -> MambaLM:
    """lm (fp32, fp32 arithmetic) holding the given matrices: the reference. An LM head among them is untied."""
    with torch.no_grad():
        if "lm_head.weight" in values:
            lm.lm_head.weight = torch.nn.Parameter(values["lm_head.weight"].clone())
        for name, p in lm.named_parameters():
            p.copy_(values.get(name, p))
    return lm


@pytest.mark.parametrize("weights", ["bfloat16", "int8"])
def test_narrow_weights_under_fp32_arithmetic_match_the_fp32_model_of_the_same_values(isa, kernel_selected, weights):
    """bf16-stored weights computed in fp32 (CPUs without fast bf16) and int8 projections and head: prefill and decode
    logits equal those of an fp32 model holding the same weight values (bf16-rounded; dequantised), with the kernels
    and with the PyTorch operators (relative to the logits' largest magnitude). The int8 kernels round their inputs to
    int16 steps first."""
    ids = torch.randint(0, tm.TINY.vocab_size, (2, 30), generator=torch.Generator().manual_seed(6))
    steps = torch.randint(0, tm.TINY.vocab_size, (2, 5), generator=torch.Generator().manual_seed(7))
    if weights == "bfloat16":
        lm = tm.tiny_lm().cast(torch.bfloat16, torch.float32)
        values = {name: p.float() for name, p in lm.named_parameters() if p.dtype == torch.bfloat16}
        bounds = {"cpu-kernel": 3e-6, "torch": 3e-6}  # measured 2-4e-7 (fp32 summation order)
    else:
        lm = quantize_lm_(tm.tiny_lm())
        values = {f"{name}.weight": dequantize(m.weight, m.weight_scale, torch.float32)
                  for name, m in lm.named_modules() if hasattr(m, "weight_scale")}
        bounds = {"cpu-kernel": 2e-4, "torch": 3e-6}  # measured 6.5e-5 with int16 inputs, 2-3e-7 without
    reference = _with_matrices(tm.tiny_lm(), values)
    expected = _prefill_then_steps(reference, ids, steps)
    for ops in (kernel_selected, TORCH_OPS):
        lm.ops_override = ops
        assert tm.rel_err(_prefill_then_steps(lm, ids, steps), expected) <= bounds[ops.name], ops.name


# The decode step of the whole layer stack in one call (decode_layers in decode_step_cpu.cpp).


def _random_state(lm: MambaLM, rows: int, seed: int) -> MambaState:
    g = torch.Generator().manual_seed(seed)
    cfg = lm.config
    return MambaState([LayerState(torch.randn(rows, cfg.d_inner, cfg.d_conv, generator=g).to(lm.compute_dtype),
                                  torch.randn(rows, cfg.d_inner, cfg.d_state, generator=g))
                       for _ in range(cfg.n_layer)], seqlen=5)


# (float weights, compute, int8 projections): each precision a CPU runs
PRECISIONS = [(torch.bfloat16, torch.bfloat16, False), (torch.float32, torch.float32, False),
              (torch.bfloat16, torch.float32, False), (torch.bfloat16, torch.float32, True),
              (torch.bfloat16, torch.bfloat16, True)]


@pytest.mark.parametrize(("weights", "compute", "int8"), PRECISIONS)
@pytest.mark.parametrize(("rows", "d_model", "d_state"), [(1, 64, 16), (3, 48, 7), (8, 64, 32), (11, 32, 16)])
def test_decode_step_in_one_call_equals_the_unfused_operators(isa, kernel_ops, weights, compute, int8, rows, d_model,
                                                               d_state):
    """The same operations in the same order and precision: bitwise the same logits and states (1-8 rows use the
    matrix-vector kernels, 11 rows torch's matmul; odd d_state, d_state 32; every storage and compute dtype)."""
    lm = MambaLM(MambaConfig(d_model=d_model, n_layer=3, vocab_size=50, d_state=d_state))
    lm.init_weights(torch.Generator().manual_seed(rows + d_state))
    with torch.no_grad():
        for block in lm.backbone.layers:  # larger steps: the old state and the new input both count
            block.mixer.dt_proj.bias.add_(1.0)
    if int8:
        quantize_lm_(lm)
    lm.cast(weights, compute)
    state = _random_state(lm, rows, seed=rows)
    tokens = torch.randint(0, 50, (rows,), generator=torch.Generator().manual_seed(rows))
    results = []
    for ops in (kernel_ops, dataclasses.replace(kernel_ops, decode_layers=None)):
        lm.ops_override = ops
        with torch.no_grad():
            results.append(lm.step(tokens, state))
    (logits, new), (logits_ref, new_ref) = results
    assert logits.shape == (rows, lm.config.padded_vocab_size) and logits.abs().max() > 0
    assert torch.equal(logits, logits_ref) and new.seqlen == new_ref.seqlen == 6
    for layer, ref in zip(new.layers, new_ref.layers, strict=True):
        assert layer.conv.dtype == compute and torch.equal(layer.conv, ref.conv) and torch.equal(layer.ssm, ref.ssm)


def test_decode_step_declines_what_it_does_not_cover(kernel_ops):
    """Autograd and d_state beyond the kernel's get None (the model then runs the unfused operators)."""
    for d_state, grad in ((8, True), (40, False)):
        lm = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=8, d_state=d_state)).init_weights()
        state = _random_state(lm, 2, seed=0)
        weights = [t for block in lm.backbone.layers for t in block.decode_weights()]
        x = torch.randn(2, 16)
        with torch.set_grad_enabled(grad):
            assert kernel_ops.decode_layers(x, weights, [s.conv for s in state.layers], [s.ssm for s in state.layers],
                                            1e-5) is None
    lm = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=8, d_state=8)).init_weights()
    state = _random_state(lm, 2, seed=0)
    weights = [t for block in lm.backbone.layers for t in block.decode_weights()]
    with torch.no_grad():
        assert kernel_ops.decode_layers(torch.randn(2, 16), weights, [s.conv for s in state.layers],
                                        [s.ssm for s in state.layers], 1e-5) is not None
