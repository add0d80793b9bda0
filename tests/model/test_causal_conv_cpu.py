"""The compiled CPU causal conv1d (`cpu_kernel.causal_conv1d`, causal_conv_cpu.cpp) against the PyTorch and naive
references. Tolerances (fp32): forward rtol = atol = 1e-5 against `torch_ops` and the fp64 naive conv (measured: equal
to `torch_ops`); the new conv state is a copy, so exactly equal; backward max |g - g_ref| <= 1e-5 * max |g_ref| for
every input, g_ref = fp32 autograd through `torch_ops` (measured: <= 7e-7)."""

from __future__ import annotations

import pytest
import torch

from cobra_app.model.ops import cpu_kernel, torch_ops
from tests.model.test_cpu_kernel import grads, rel_err, same_at_one_and_many_threads
from tests.model.test_ops import naive_conv

NAMES = ["x", "weight", "bias", "conv_state"]
GRAD_RTOL = 1e-5


def conv_args(seed: int, Bsz: int, Dn: int, L: int, K: int, strided: bool = False) -> list[torch.Tensor]:
    """x [B, D, L] (with `strided`, a channel slice of a [B, L, 2D] tensor, as the mixer's), weight [D, K], bias [D],
    a non-zero conv state [B, D, K]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(Bsz, L, 2 * Dn, generator=g).transpose(1, 2)[:, :Dn] if strided else torch.randn(Bsz, Dn, L,
                                                                                                       generator=g)
    return [x, torch.randn(Dn, K, generator=g), torch.randn(Dn, generator=g), torch.randn(Bsz, Dn, K, generator=g)]


# (Bsz, Dn, L, K, strided): one step (decoding), shorter than the kernel (L < K), a training chunk's shape, K = 3,
# a strided view of the mixer's in_proj output.
CASES = [(1, 3, 1, 4, False), (2, 4, 2, 4, False), (3, 5, 9, 4, True), (4, 33, 9, 3, False), (49, 64, 8, 4, True)]


@pytest.mark.parametrize("case", CASES)
def test_forward_equals_torch_and_naive(kernel_ops, case):
    Bsz, Dn, L, K, strided = case
    args = conv_args(0, Bsz, Dn, L, K, strided)
    y, state = cpu_kernel.causal_conv1d(*args)
    y_ref, state_ref = torch_ops.causal_conv1d(*args)
    y_naive, _ = naive_conv(*args)
    assert y.shape == (Bsz, Dn, L) and y.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y.double(), y_naive, rtol=1e-5, atol=1e-5)
    assert torch.equal(state, state_ref)


@pytest.mark.parametrize("case", CASES)
def test_backward_equals_autograd_of_reference(kernel_ops, case):
    Bsz, Dn, L, K, strided = case
    args = conv_args(1, Bsz, Dn, L, K, strided)
    g = torch.Generator().manual_seed(2)
    y_weight, s_weight = torch.randn(Bsz, Dn, L, generator=g), torch.randn(Bsz, Dn, K, generator=g)
    got = grads(cpu_kernel.causal_conv1d, args, y_weight, s_weight)
    want = grads(torch_ops.causal_conv1d, args, y_weight, s_weight)
    for name, a, b in zip(NAMES, got, want, strict=True):
        assert a.shape == b.shape, name
        assert rel_err(a, b) <= GRAD_RTOL, (name, rel_err(a, b))


@pytest.mark.parametrize("which", ["y", "state"])
def test_backward_with_one_output_used(kernel_ops, which):
    """A chunk's last state unused (the last chunk), or only its state used (a prefix): the other output's gradient
    is zero."""
    args = conv_args(3, 3, 6, 5, 4)
    g = torch.Generator().manual_seed(4)
    y_weight = torch.randn(3, 6, 5, generator=g) if which == "y" else None
    s_weight = torch.randn(3, 6, 4, generator=g) if which == "state" else None
    got = grads(cpu_kernel.causal_conv1d, args, y_weight, s_weight)
    want = grads(torch_ops.causal_conv1d, args, y_weight, s_weight)
    for name, a, b in zip(NAMES, got, want, strict=True):
        b = torch.zeros_like(args[NAMES.index(name)]) if b is None else b
        assert rel_err(a, b) <= GRAD_RTOL, name


def test_results_do_not_depend_on_thread_count(kernel_ops):
    """The weight and bias gradients sum over rows and time in one fixed order per channel (training is
    bit-reproducible whatever the cores)."""
    args = conv_args(5, 7, 300, 9, 4, strided=True)
    w = torch.randn(7, 300, 9, generator=torch.Generator().manual_seed(6))
    assert same_at_one_and_many_threads(
        lambda: [*cpu_kernel.causal_conv1d(*args), *grads(cpu_kernel.causal_conv1d, args, w, None)])


def test_inputs_are_not_modified(kernel_ops):
    args = conv_args(7, 2, 5, 6, 4)
    before = [a.clone() for a in args]
    cpu_kernel.causal_conv1d(*args)
    grads(cpu_kernel.causal_conv1d, args, torch.ones(2, 5, 6), torch.ones(2, 5, 4))
    assert all(torch.equal(a, b) for a, b in zip(args, before, strict=True))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_go_to_torch_ops(kernel_ops, dtype):
    """fp64 (gradient checks) and bf16 activations are the PyTorch conv's, exactly."""
    args = [a.to(dtype) for a in conv_args(8, 2, 3, 5, 4)]
    for got, want in zip(cpu_kernel.causal_conv1d(*args), torch_ops.causal_conv1d(*args), strict=True):
        assert got.dtype == dtype and torch.equal(got, want)
    if dtype == torch.float64:
        inputs = tuple(a.requires_grad_() for a in args)
        assert torch.autograd.gradcheck(lambda *a: cpu_kernel.causal_conv1d(*a)[0], inputs)


def test_the_kernel_ops_use_it(kernel_ops):
    assert kernel_ops.causal_conv1d is cpu_kernel.causal_conv1d


def test_bad_shapes_are_refused(kernel_ops):
    x, weight, bias, state = conv_args(9, 2, 3, 4, 4)
    with pytest.raises(RuntimeError, match="conv_state must be"):
        cpu_kernel.causal_conv1d(x, weight, bias, state[:, :, :3])
