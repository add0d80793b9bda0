"""The compiled CPU selective scan (`cobra_app.model.ops.cpu_kernel`) against the PyTorch and naive references.

Every kernel variant this CPU can run (AVX-512, AVX2, baseline) is tested. Tolerances:
- forward, fp32: rtol = atol = 1e-5 against `torch_ops` and the fp64 naive recurrence (as test_ops.py);
- bf16/fp16 outputs: one ulp of the output dtype (the fp32 results agree to ~1e-6, then round);
- backward: max |g - g_ref| <= 1e-4 * max |g_ref| for every input, g_ref = fp32 autograd through `torch_ops`
  (measured: ~1e-6).
When the kernel cannot be built here the tests skip with the build error, or fail when CI=true.
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

from cobra_app.model.mamba import LayerState, MambaConfig, MambaLM
from cobra_app.model.ops import TORCH_OPS, cpu_kernel, get_ops, torch_ops
from tests.model import test_mamba as tm
from tests.model.test_ops import naive_scan, random_scan_inputs

NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "ssm_state"]
GRAD_RTOL = 1e-4


@pytest.fixture(scope="module")
def kernel_ops():
    ops = cpu_kernel.cpu_kernel_ops()
    if ops is None:
        reason = f"CPU scan kernel could not be built: {cpu_kernel.load_error()}"
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return ops


@pytest.fixture(params=["avx512", "avx2", "baseline"])
def isa(request, kernel_ops):
    """Run the test on each kernel variant (capped at what this CPU supports; duplicates are skipped)."""
    used = torch.ops.cobra_scan.cap_isa(request.param)
    try:
        if used != request.param:
            pytest.skip(f"this CPU has no {request.param}")
        yield used
    finally:
        torch.ops.cobra_scan.cap_isa("avx512")


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


def grads(scan, args: list[torch.Tensor], y_weight: torch.Tensor | None, s_weight: torch.Tensor | None):
    leaves = [a.detach().clone().requires_grad_() for a in args]
    y, s = scan(*leaves)
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


def test_results_do_not_depend_on_thread_count(kernel_ops):
    args = scan_args(11, 3, 300, 17, 16)
    w = torch.randn(args[0].shape)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [*cpu_kernel.selective_scan(*args), *grads(cpu_kernel.selective_scan, args, w, None)]
        torch.set_num_threads(max(2, threads))
        many = [*cpu_kernel.selective_scan(*args), *grads(cpu_kernel.selective_scan, args, w, None)]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, many, strict=True))


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


# The bf16 decode projections (linear_cpu.cpp).


@pytest.fixture
def linear_kernel(kernel_ops):
    if not torch.ops.cobra_linear.available():
        pytest.skip("this CPU has no AVX-512 BF16: decode projections stay on F.linear")
    return kernel_ops.linear


@pytest.mark.parametrize(("rows", "k", "n"), [(1, 2560, 1024), (1, 160, 77), (1, 64, 5), (2, 300, 19), (3, 37, 65),
                                             (4, 2560, 131), (8, 5120, 33), (5, 96, 2)])
def test_linear_equals_the_fp32_product_rounded_once(linear_kernel, rows, k, n):
    """fp32 accumulation of bf16 products, one rounding to bf16: within half a bf16 ulp of the exact product
    (plus fp32 summation error), and never further from it than torch's own bf16 F.linear."""
    g = torch.Generator().manual_seed(rows * 1000 + k)
    x = torch.randn(rows, 1, k, generator=g).to(torch.bfloat16)
    w = torch.randn(n, k, generator=g).to(torch.bfloat16)
    exact = torch.nn.functional.linear(x.double(), w.double())  # [rows, 1, n]
    out = linear_kernel(x, w)
    assert out.shape == (rows, 1, n) and out.dtype == torch.bfloat16
    magnitude = torch.nn.functional.linear(x.double().abs(), w.double().abs())
    bound = exact.abs() * 2.0**-8 + magnitude * 2.0**-20  # half a bf16 ulp (<= |y| 2^-8) + fp32 summation error
    assert ((out.double() - exact).abs() <= bound).all()
    torch_err = (torch.nn.functional.linear(x, w).double() - exact).abs().max()
    assert (out.double() - exact).abs().max() <= torch_err + magnitude.max() * 2.0**-20


def test_linear_falls_back_to_f_linear_outside_decode_shapes(linear_kernel):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 96, generator=g).to(torch.bfloat16)
    for x in (torch.randn(9, 96, generator=g).to(torch.bfloat16),  # more rows than a decode batch
              torch.randn(2, 96, generator=g),  # fp32
              torch.randn(2, 96, generator=g).to(torch.bfloat16).requires_grad_()):  # training
        expected = torch.nn.functional.linear(x, w.to(x.dtype))
        assert torch.equal(linear_kernel(x, w.to(x.dtype)), expected)


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


# The fused one-token mixer step (mixer_step in selective_scan_cpu.cpp).


def _mixer_step_both_ways(kernel_ops, dtype: torch.dtype, rows: int, d_model: int, d_state: int):
    """One decoding step of a random mixer on a random state, fused and unfused: [(out, conv, ssm)] x 2."""
    config = MambaConfig(d_model=d_model, n_layer=1, vocab_size=8, d_state=d_state)
    lm = MambaLM(config).init_weights(torch.Generator().manual_seed(rows + d_state))
    with torch.no_grad():
        lm.backbone.layers[0].mixer.dt_proj.bias.add_(1.0)  # larger steps: the old state and the new input both count
    mixer = lm.cast(dtype).backbone.layers[0].mixer
    g = torch.Generator().manual_seed(rows)
    h = torch.randn(rows, 1, d_model, generator=g).to(dtype)
    state = LayerState(torch.randn(rows, config.d_inner, config.d_conv, generator=g).to(dtype),
                       torch.randn(rows, config.d_inner, d_state, generator=g))
    unfused = dataclasses.replace(kernel_ops, mixer_step=None)
    with torch.no_grad():
        return [(out, s.conv, s.ssm) for out, s in (mixer(h, state, ops) for ops in (kernel_ops, unfused))]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("rows", "d_model", "d_state"), [(1, 64, 16), (3, 48, 7), (8, 64, 32), (11, 32, 16)])
def test_fused_mixer_step_equals_the_unfused_operators(kernel_ops, dtype, rows, d_model, d_state):
    """The same operations in the same order and precision: bitwise the same output and states (1-8 rows use the
    bf16 matrix-vector kernel, 11 rows F.linear; odd d_state, d_state 32)."""
    (out, conv, ssm), (out_ref, conv_ref, ssm_ref) = _mixer_step_both_ways(kernel_ops, dtype, rows, d_model, d_state)
    assert out.shape == (rows, 1, d_model) and out.dtype == dtype
    assert torch.equal(out, out_ref) and torch.equal(conv, conv_ref) and torch.equal(ssm, ssm_ref)
    assert out.abs().max() > 0 and (ssm - ssm_ref).abs().max() == 0


def test_fused_mixer_step_declines_what_it_does_not_cover(kernel_ops):
    """Autograd and d_state beyond the kernel's get None (the mixer then runs the unfused operators)."""
    D, N, K, R = 16, 8, 4, 2
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(2, 2 * D, generator=g), torch.randn(2, D, K, generator=g), torch.randn(D, K, generator=g),
            torch.randn(D, generator=g), torch.randn(R + 2 * N, D, generator=g), torch.randn(D, R, generator=g),
            torch.randn(D, generator=g), -torch.rand(D, N, generator=g), torch.randn(D, generator=g),
            torch.randn(2, D, N, generator=g)]
    assert kernel_ops.mixer_step(*args) is not None
    args[0].requires_grad_()
    assert kernel_ops.mixer_step(*args) is None
    wide = [a.detach() for a in args]
    wide[7], wide[9], wide[4] = -torch.rand(D, 40), torch.randn(2, D, 40), torch.randn(R + 80, D)
    assert kernel_ops.mixer_step(*wide) is None
