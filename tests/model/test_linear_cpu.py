"""The projections' kernels (linear_cpu.cpp, via `cpu_kernel.linear`) against exact products and F.linear.

Every ISA variant this CPU can run is tested (the `isa` fixture, tests/model/conftest.py). Bounds, per output:
- fp32 arithmetic (bf16 weights with fp32 inputs, M <= 8 rows): within 2^-18 of sum_k |x_k w_k| of the exact
  product (fp32 summation; one wrong weight of 5120 would be ~2^-12 of it);
- bf16 inputs and weights: rounded once to bf16, so within half a bf16 ulp plus that, and never further from the exact
  product than torch's own bf16 F.linear;
- int8 weights (one scale per INT8_GROUP weights of a row): the inputs are rounded to int16 steps of max|x| / 32767
  first, so within step / 2 * sum_k |w_k| plus the fp32 bound, of x @ (q * scale of k's group)^T;
- longer inputs (the blocked path) and `torch_ops.linear`: torch's matmul on the converted weights, equal to F.linear
  on the whole converted matrix up to fp32 (or bf16) rounding.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cobra_app.model.ops import torch_ops
from cobra_app.model.ops.torch_ops import INT8_GROUP
from cobra_app.model.quantize import quantize_groups

# (rows, K, N): decode rows 1-8, odd K (scalar tails, a row shorter than an int8 group) and N (an unpaired last row),
# Cobra-3B in_proj / x_proj widths
DECODE_SHAPES = [(1, 2560, 1024), (1, 160, 77), (1, 64, 5), (2, 300, 19), (3, 37, 65), (4, 2560, 131), (8, 5120, 33),
                 (5, 96, 2), (7, 5120, 192), (1, 20, 9)]


def operands(rows: int, k: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 7919 + rows * 1000 + k + n)
    return torch.randn(rows, k, generator=g), torch.randn(n, k, generator=g)


def widened(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int8 q [N, K] with scale [N, G] -> q[n, k] * scale[n, k // INT8_GROUP] in fp64."""
    return q.double() * scale.double()[:, torch.arange(q.shape[1]) // INT8_GROUP]


def exact(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x @ w^T, |x| @ |w|^T) in fp64."""
    return F.linear(x.double(), w.double()), F.linear(x.double().abs(), w.double().abs())


@pytest.mark.parametrize(("rows", "k", "n"), DECODE_SHAPES)
def test_bf16_weights_with_fp32_inputs(isa, kernel_ops, rows, k, n):
    x, w = operands(rows, k, n)
    w = w.bfloat16()
    out = kernel_ops.linear(x, w, None)
    assert out.shape == (rows, n) and out.dtype == torch.float32
    reference, magnitude = exact(x, w)
    assert ((out.double() - reference).abs() <= magnitude * 2.0**-18).all()


@pytest.mark.parametrize(("rows", "k", "n"), DECODE_SHAPES)
def test_bf16_inputs_and_weights_are_rounded_once(isa, kernel_ops, rows, k, n):
    x, w = (t.bfloat16() for t in operands(rows, k, n, seed=1))
    out = kernel_ops.linear(x[:, None], w, None)  # [rows, 1, k]: the mixer's layout
    assert out.shape == (rows, 1, n) and out.dtype == torch.bfloat16
    reference, magnitude = exact(x, w)
    error = (out[:, 0].double() - reference).abs()
    assert (error <= reference.abs() * 2.0**-8 + magnitude * 2.0**-18).all()
    torch_error = (F.linear(x, w).double() - reference).abs().max()
    assert error.max() <= torch_error + magnitude.max() * 2.0**-18


@pytest.mark.parametrize(("rows", "k", "n"), DECODE_SHAPES)
def test_int8_weights(isa, kernel_ops, rows, k, n):
    x, w = operands(rows, k, n, seed=2)
    x[0, k // 2] = 40.0  # an outlier sets the input's int16 step
    q, scale = quantize_groups(w)
    out = kernel_ops.linear(x, q, scale)
    assert out.shape == (rows, n) and out.dtype == torch.float32
    dequantized = widened(q, scale)
    reference, magnitude = exact(x, dequantized)
    step = x.abs().amax(dim=1, keepdim=True).double() / 32767
    bound = step / 2 * dequantized.abs().sum(dim=1) + magnitude * 2.0**-18
    assert ((out.double() - reference).abs() <= bound).all()


@pytest.mark.parametrize("weights", ["bf16", "int8"])
def test_bf16_inputs_with_widened_weights_are_the_fp32_product_rounded_once(isa, kernel_ops, weights):
    """bf16 inputs with int8 weights (any CPU), or bf16 weights below AVX-512 BF16: fp32 arithmetic on the same
    values, one rounding to bf16."""
    x, w = operands(3, 320, 40, seed=3)
    x = x.bfloat16()
    stored, scale = quantize_groups(w) if weights == "int8" else (w.bfloat16(), None)
    out = kernel_ops.linear(x, stored, scale)
    assert out.dtype == torch.bfloat16
    if weights == "int8" or isa != "avx512_bf16":
        assert torch.equal(out, kernel_ops.linear(x.float(), stored, scale).bfloat16())


@pytest.mark.parametrize("weights", ["bf16", "int8"])
@pytest.mark.parametrize("compute", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "k", "n"), [(9, 96, 40), (40, 2560, 3000), (760, 64, 700)])
def test_longer_inputs_use_the_matmul_on_converted_blocks(kernel_ops, weights, compute, rows, k, n):
    """More than 8 rows (prefill, vision): blocks of weight rows converted to the inputs' dtype, torch's matmul; the
    same numbers as F.linear on the whole converted matrix, and as `torch_ops.linear` (the fallback). In fp32 the
    BLAS may sum a block in another order than the whole matrix (it picks its kernel by shape: on an Intel Xeon the
    two differ by up to 1e-4 at K = 2560), so there the spec is F.linear's own accuracy: the largest error against
    the exact (fp64) product at most twice F.linear's."""
    x, w = operands(rows, k, n, seed=4)
    x = x.to(compute)
    if weights == "int8":
        q, scale = quantize_groups(w)
        stored, converted = q, widened(q, scale).to(compute)
    else:
        stored, scale = w.bfloat16(), None
        converted = stored.to(compute)
    expected = F.linear(x, converted)
    exact = F.linear(x.double(), converted.double())
    for linear in (kernel_ops.linear, torch_ops.linear):
        out = linear(x, stored, scale)
        assert out.dtype == compute and out.shape == (rows, n)
        if compute == torch.float32:
            assert (out.double() - exact).abs().max() <= 2 * (expected.double() - exact).abs().max()
        else:
            torch.testing.assert_close(out, expected, rtol=2**-7, atol=1e-2)


def test_same_dtype_products_are_f_linear(kernel_ops):
    """Weights in the inputs' dtype and longer inputs, or autograd: exactly F.linear."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 96, generator=g)
    for x, weight in ((torch.randn(9, 96, generator=g).bfloat16(), w.bfloat16()),  # more rows than a decode batch
                      (torch.randn(2, 96, generator=g), w),  # fp32 decode
                      (torch.randn(2, 96, generator=g).bfloat16().requires_grad_(), w.bfloat16())):  # training
        assert torch.equal(kernel_ops.linear(x, weight, None), F.linear(x, weight))


def test_int8_weights_need_their_scales(kernel_ops):
    q, scale = quantize_groups(torch.randn(4, 32))
    with pytest.raises(RuntimeError, match="scales"):
        torch.ops.cobra_linear.linear(torch.randn(1, 32), q, None)
    with pytest.raises(RuntimeError, match="scales"):
        torch.ops.cobra_linear.linear(torch.randn(1, 32), q.float(), scale)
    for wrong in (scale[:, 0], scale.float()):  # one scale per row; fp32 scales
        with pytest.raises(RuntimeError, match=r"scale must be bf16 \[N, ceil\(K / 32\)\]"):
            torch.ops.cobra_linear.linear(torch.randn(1, 32), q, wrong)


def test_kernel_isa_matches_the_python_side_detection(kernel_ops):
    from cobra_app.model.ops.cpu_capability import ISA_LEVELS, host_isa

    torch.ops.cobra_cpu.cap_isa(ISA_LEVELS[-1])
    assert torch.ops.cobra_cpu.isa() == host_isa()
