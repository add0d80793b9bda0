"""The PyTorch Mamba operators against naive per-step references, from zero and non-zero states."""

import logging
import sys
import types

import pytest
import torch
import torch.nn.functional as F

import cobra_app.model.ops as ops_package
from cobra_app.model.ops import TORCH_OPS, get_ops
from cobra_app.model.ops import torch_ops
from tests.model.kernel_standins import import_cuda_ops


def naive_scan(u, delta, A, B, C, D, z, delta_bias, s0):
    """Textbook recurrence, one (batch, channel, state) element at a time in fp64: the obviously-correct reference."""
    Bsz, Dn, L = u.shape
    N = A.shape[1]
    u, delta, A, B, C, D, z, delta_bias, s = (t.double() for t in (u, delta, A, B, C, D, z, delta_bias, s0))
    y = torch.zeros(Bsz, Dn, L, dtype=torch.float64)
    s = s.clone()
    for b in range(Bsz):
        for d in range(Dn):
            for t in range(L):
                dt = F.softplus(delta[b, d, t] + delta_bias[d])
                acc = 0.0
                for n in range(N):
                    s[b, d, n] = torch.exp(dt * A[d, n]) * s[b, d, n] + dt * u[b, d, t] * B[b, n, t]
                    acc = acc + s[b, d, n] * C[b, n, t]
                y[b, d, t] = (acc + D[d] * u[b, d, t]) * F.silu(z[b, d, t])
    return y, s


def naive_conv(x, weight, bias, conv_state):
    """y_t = silu(bias + sum_k w_k * input_{t-K+1+k}) over the concatenated history, in fp64."""
    K = weight.shape[-1]
    hist = torch.cat([conv_state, x], dim=-1).double()
    L = x.shape[-1]
    y = torch.empty(x.shape, dtype=torch.float64)
    for t in range(L):
        window = hist[..., t + 1 : t + 1 + K]  # the K inputs ending at x_t
        y[..., t] = F.silu((window * weight.double()).sum(-1) + bias.double())
    return y, hist[..., -K:]


def random_scan_inputs(g, Bsz=2, Dn=3, L=7, N=4):
    return dict(
        u=torch.randn(Bsz, Dn, L, generator=g),
        delta=torch.randn(Bsz, Dn, L, generator=g),
        A=-torch.rand(Dn, N, generator=g) * 3,
        B=torch.randn(Bsz, N, L, generator=g),
        C=torch.randn(Bsz, N, L, generator=g),
        D=torch.randn(Dn, generator=g),
        z=torch.randn(Bsz, Dn, L, generator=g),
        delta_bias=torch.randn(Dn, generator=g),
    )


@pytest.mark.parametrize("nonzero_start", [False, True])
def test_scan_equals_naive_recurrence(nonzero_start):
    g = torch.Generator().manual_seed(1)
    inputs = random_scan_inputs(g)
    s0 = torch.randn(2, 3, 4, generator=g) if nonzero_start else torch.zeros(2, 3, 4)
    y, s = torch_ops.selective_scan(**inputs, ssm_state=s0)
    y_ref, s_ref = naive_scan(**inputs, s0=s0)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s.double(), s_ref, rtol=1e-5, atol=1e-5)


def test_scan_across_block_boundaries(monkeypatch):
    """Blocking the time axis (memory bound for long chunks) does not change the result."""
    g = torch.Generator().manual_seed(2)
    inputs = random_scan_inputs(g, L=11)
    s0 = torch.randn(2, 3, 4, generator=g)
    y_one, s_one = torch_ops.selective_scan(**inputs, ssm_state=s0)
    monkeypatch.setattr(torch_ops, "SCAN_BLOCK", 3)
    y_blk, s_blk = torch_ops.selective_scan(**inputs, ssm_state=s0)
    torch.testing.assert_close(y_blk, y_one, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s_blk, s_one, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("L", [1, 2, 9])
def test_conv_equals_naive_with_history(L):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, L, generator=g)
    w, b = torch.randn(5, 4, generator=g), torch.randn(5, generator=g)
    state = torch.randn(2, 5, 4, generator=g)
    y, new_state = torch_ops.causal_conv1d(x, w, b, state)
    y_ref, state_ref = naive_conv(x, w, b, state)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(new_state.double(), state_ref)


def test_ops_are_differentiable():
    """Gradients of the scan and conv (fp64 gradcheck), needed to train the offline demo model."""
    g = torch.Generator().manual_seed(4)
    inputs = {k: v.double().requires_grad_() for k, v in random_scan_inputs(g, Bsz=1, Dn=2, L=4, N=3).items()}
    s0 = torch.randn(1, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: torch_ops.selective_scan(*a)[0], (*inputs.values(), s0))
    x = torch.randn(1, 2, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: torch_ops.causal_conv1d(*a)[0], (x, w, b, torch.zeros(1, 2, 4).double()))


def test_cpu_ops_selection():
    """The compiled CPU kernel where it builds, plain PyTorch when kernels are not preferred."""
    assert get_ops("cpu", prefer_kernels=False) is TORCH_OPS
    assert get_ops("cpu").name in {"cpu-kernel", "torch"}


@pytest.fixture
def fresh_selection():
    """`cuda_kernel_ops` and the ops-path log line are cached per process: cleared before and after the test."""
    ops_package.cuda_kernel_ops.cache_clear()
    ops_package._announce.cache_clear()
    yield
    ops_package.cuda_kernel_ops.cache_clear()
    ops_package._announce.cache_clear()


def broken_package(name: str, error: Exception) -> types.ModuleType:
    """A module whose every attribute lookup raises `error`, as a package failing inside its own imports does."""
    module = types.ModuleType(name)

    def fail(attr):
        raise error

    module.__getattr__ = fail
    return module


@pytest.mark.parametrize("on_cuda_machine", [False, True])
def test_kernels_not_installed_is_info(fresh_selection, monkeypatch, caplog, on_cuda_machine):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: on_cuda_machine)
    monkeypatch.setitem(sys.modules, "causal_conv1d", None)  # import raises ModuleNotFoundError(name=causal_conv1d)
    with caplog.at_level(logging.INFO, logger="cobra_app.model.ops"):
        assert ops_package.cuda_kernel_ops() is None
    assert [r.levelname for r in caplog.records] == ["INFO"]


@pytest.mark.parametrize("error", [RuntimeError("Triton: 0 active drivers"),
                                   ImportError("selective_scan_cuda.so: undefined symbol"),
                                   ModuleNotFoundError("No module named 'tilelang'", name="tilelang")])
def test_installed_kernels_failing_to_import_on_a_cuda_machine_warn(fresh_selection, monkeypatch, caplog, error):
    """mamba-ssm 2.3 imports Mamba2/Mamba3 and their Triton/TileLang kernels with the package: an error there, or an
    extension built for another torch, silently put a GPU on the slower PyTorch ops with an INFO line."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "causal_conv1d", broken_package("causal_conv1d", error))
    with caplog.at_level(logging.INFO, logger="cobra_app.model.ops"):
        assert ops_package.cuda_kernel_ops() is None
        assert get_ops("cuda") is TORCH_OPS
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]
    assert type(error).__name__ in caplog.records[0].getMessage()
    assert caplog.records[1].getMessage() == "Mamba ops path: torch on cuda"


def test_the_same_failure_without_a_gpu_is_info(fresh_selection, monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setitem(sys.modules, "causal_conv1d", broken_package("causal_conv1d", RuntimeError("no driver")))
    with caplog.at_level(logging.INFO, logger="cobra_app.model.ops"):
        assert ops_package.cuda_kernel_ops() is None
    assert [r.levelname for r in caplog.records] == ["INFO"]


def test_importable_kernels_are_selected_on_cuda_and_the_path_is_logged(fresh_selection, monkeypatch, caplog):
    module, _ = import_cuda_ops(monkeypatch)
    monkeypatch.setitem(sys.modules, "cobra_app.model.ops.cuda_ops", module)  # what a successful import finds
    with caplog.at_level(logging.INFO, logger="cobra_app.model.ops"):
        ops = get_ops("cuda")
    assert ops.name == "cuda-kernels" and ops.selective_scan is module.selective_scan
    assert caplog.records[-1].getMessage() == "Mamba ops path: cuda-kernels on cuda"
