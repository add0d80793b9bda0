"""The CUDA operators' wrapping of the kernels, on the CPU: the kernels are stand-ins (tests/model/kernel_standins.py)
that compute with the PyTorch ops and record what they receive. What only a GPU can show (the kernels' own numbers,
their vector loads) is `python -m cobra_app.bench.cuda_check`'s."""

import pytest
import torch

from cobra_app.model.mamba import MambaLM, MambaState
from cobra_app.model.ops import MambaOps, torch_ops
from tests.model.kernel_standins import import_cuda_ops, is_aligned
from tests.model.test_mamba import TINY, rel_err, tiny_lm

BF16_ULP = 2.0**-7  # spacing of bf16 numbers in [1, 2): one rounding of equal fp32 values may differ by this much


@pytest.fixture
def cuda(monkeypatch):
    """(cuda_ops module on stand-in kernels, their recorder)."""
    return import_cuda_ops(monkeypatch)


def kernel_ops(module) -> MambaOps:
    return MambaOps("cuda-kernels", module.causal_conv1d, module.selective_scan)


def scan_inputs(g: torch.Generator, Bn=2, D=8, L=20, N=4, dtype=torch.float32, state_scale=1.0) -> dict:
    """Random scan inputs: u, delta, B, C, z in `dtype` (as the mixer gives them), the small parameters in fp32."""
    seq = dict(u=(Bn, D, L), delta=(Bn, D, L), B=(Bn, N, L), C=(Bn, N, L), z=(Bn, D, L))
    inputs = {k: torch.randn(*shape, generator=g).to(dtype) for k, shape in seq.items()}
    return dict(inputs, A=-torch.rand(D, N, generator=g) * 3, D=torch.randn(D, generator=g),
                delta_bias=torch.randn(D, generator=g), ssm_state=torch.randn(Bn, D, N, generator=g) * state_scale)


# --- what reaches the kernels ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("L", [128, 256, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_sequence_input_reaches_the_kernels_contiguous_and_aligned(cuda, L, dtype):
    """The conv output the scan reads used to be a view 3 elements into its buffer: at L = 128, 256, 512, 1024 or a
    multiple of 2048 the real scan then dies on a misaligned 16-byte load. Here the whole model runs, from a zero
    and from a non-zero state, and every sequence tensor a multi-token kernel received is checked."""
    module, kernels = cuda
    lm = tiny_lm(dtype)
    lm.ops_override = kernel_ops(module)
    ids = torch.randint(0, TINY.vocab_size, (2, 2 * L), generator=torch.Generator().manual_seed(L))
    with torch.no_grad():
        _, state = lm(ids[:, :L])
        lm(ids[:, L:], state=state)
    received = kernels.sequence_inputs()
    assert {name for name, _, _ in received} == {"causal_conv1d_fn", "selective_scan_fn"}
    misaligned = [(name, arg, t.stride(), t.data_ptr() % 16) for name, arg, t in received if not is_aligned(t)]
    assert not misaligned


def test_the_scan_input_from_a_misaligned_view_is_copied_and_an_aligned_one_is_not(cuda):
    module, _ = cuda
    buffer = torch.randn(2, 8, 131)
    view = buffer[..., 3:]  # [2, 8, 128], rows start 12 bytes into the buffer
    copied = module.aligned(view)
    assert is_aligned(copied) and torch.equal(copied, view)
    fresh = torch.randn(2, 8, 128)
    assert module.aligned(fresh) is fresh


# --- the same results as the PyTorch ops ----------------------------------------------------------------------------

@pytest.mark.parametrize("L", [1, 3, 128, 300])
@pytest.mark.parametrize("start", ["zero", "non-zero"])
def test_scan_equals_torch_ops(cuda, L, start):
    module, _ = cuda
    inputs = scan_inputs(torch.Generator().manual_seed(L), L=L)
    if start == "zero":
        inputs["ssm_state"] = torch.zeros_like(inputs["ssm_state"])
    before = inputs["ssm_state"].clone()
    with torch.no_grad():
        y, s = module.selective_scan(**inputs)
        y_ref, s_ref = torch_ops.selective_scan(**inputs)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(inputs["ssm_state"], before)  # states are values


@pytest.mark.parametrize("L", [1, 2, 3, 130])
def test_conv_equals_torch_ops_and_returns_a_state_that_owns_its_memory(cuda, L):
    module, _ = cuda
    g = torch.Generator().manual_seed(L)
    x = torch.randn(2, L, 16, generator=g).transpose(1, 2)[:, :8]  # [2, 8, L], sliced as the mixer does
    w, b, state = torch.randn(8, 4, generator=g), torch.randn(8, generator=g), torch.randn(2, 8, 4, generator=g)
    before = state.clone()
    with torch.no_grad():
        y, new_state = module.causal_conv1d(x, w, b, state)
        y_ref, state_ref = torch_ops.causal_conv1d(x, w, b, state)
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(new_state, state_ref) and torch.equal(state, before)
    assert new_state.untyped_storage().nbytes() == new_state.numel() * new_state.element_size()


@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_model_continuation_equals_full_recompute_and_torch_ops(cuda, dtype, bound):
    """A prefill, a 128-token continuation from its state and decode steps equal one pass over the whole history,
    and the PyTorch ops' run (bf16: 1e-2 relative, the rounding bound of tests/model/test_mamba.py)."""
    module, kernels = cuda
    lm = tiny_lm(dtype)
    ids = torch.randint(0, TINY.vocab_size, (2, 200), generator=torch.Generator().manual_seed(7))

    def chunks() -> tuple[torch.Tensor, MambaState]:
        head, state = lm(ids[:, :64])
        tail, state = lm(ids[:, 64:192], state=state)
        steps = []
        for t in range(192, 200):
            logits, state = lm.step(ids[:, t], state)
            steps.append(logits[:, None])
        return torch.cat([head, tail, *steps], dim=1), state

    with torch.no_grad():
        lm.ops_override = kernel_ops(module)
        chunked, state = chunks()
        full, full_state = lm(ids)
        lm.ops_override = MambaOps("torch", torch_ops.causal_conv1d, torch_ops.selective_scan)
        reference, reference_state = chunks()
    assert rel_err(chunked, full) <= bound and state.max_abs_diff(full_state) <= bound
    assert rel_err(chunked, reference) <= bound and state.max_abs_diff(reference_state) <= bound
    assert {"selective_scan_fn", "causal_conv1d_fn", "selective_state_update", "causal_conv1d_update"} <= set(
        kernels.names())


# --- the start-state correction -------------------------------------------------------------------------------------

def closed_form_contribution(delta, delta_bias, A, C, s0):
    """The correction materialised whole, in fp64: y_t = C_t . (exp(A sum_{k<=t} dt_k) * s0), s = its last state."""
    dt = torch.nn.functional.softplus(delta.double() + delta_bias.double()[:, None])  # [B, D, L]
    carried = torch.exp(dt.cumsum(-1)[..., None] * A.double()[:, None, :]) * s0.double()[:, :, None, :]
    return torch.einsum("bdln,bnl->bdl", carried, C.double()), carried[:, :, -1]


def test_blockwise_correction_equals_the_whole_one(cuda, monkeypatch):
    """fp32: blocks of 3 time steps, one block, and the fp64 closed form agree to 1e-6 relative."""
    module, _ = cuda
    i = scan_inputs(torch.Generator().manual_seed(3), L=11)
    args = (i["delta"], i["delta_bias"], i["A"], i["C"], i["ssm_state"])
    monkeypatch.setattr(module, "CORRECTION_BLOCK", 3)
    y_blocks, s_blocks = module.start_state_contribution(*args)
    monkeypatch.setattr(module, "CORRECTION_BLOCK", 11)
    y_whole, s_whole = module.start_state_contribution(*args)
    y_exact, s_exact = closed_form_contribution(*args)
    torch.testing.assert_close(y_blocks, y_whole, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s_blocks, s_whole, rtol=0, atol=0)
    torch.testing.assert_close(y_whole.double(), y_exact, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s_whole.double(), s_exact, rtol=1e-6, atol=1e-6)


def test_blockwise_correction_bf16_scan_within_one_rounding(cuda, monkeypatch):
    """bf16 inputs: the scan with correction blocks of 3 and with one block differ by at most one bf16 rounding
    (relative 2^-7), the fp32 values before it agreeing to ~1e-6."""
    module, _ = cuda
    inputs = scan_inputs(torch.Generator().manual_seed(4), L=11, dtype=torch.bfloat16)
    with torch.no_grad():
        monkeypatch.setattr(module, "CORRECTION_BLOCK", 3)
        y_blocks, s_blocks = module.selective_scan(**inputs)
        monkeypatch.setattr(module, "CORRECTION_BLOCK", 11)
        y_whole, s_whole = module.selective_scan(**inputs)
    torch.testing.assert_close(y_blocks.float(), y_whole.float(), rtol=BF16_ULP, atol=1e-5)
    torch.testing.assert_close(s_blocks, s_whole, rtol=1e-6, atol=1e-6)


def test_correction_temporaries_are_bounded_by_the_block(cuda, monkeypatch):
    """A 40-step chunk with blocks of 8: no [B, D, T, N] temporary spans more than 8 time steps."""
    module, _ = cuda
    seen = []
    einsum = torch.einsum

    def recording_einsum(equation, *operands):
        seen.append(operands[0].shape)
        return einsum(equation, *operands)

    monkeypatch.setattr(module, "CORRECTION_BLOCK", 8)
    monkeypatch.setattr(torch, "einsum", recording_einsum)
    i = scan_inputs(torch.Generator().manual_seed(5), Bn=2, D=8, L=40, N=4)
    module.start_state_contribution(i["delta"], i["delta_bias"], i["A"], i["C"], i["ssm_state"])
    assert seen == [torch.Size([2, 8, 8, 4])] * 5


def test_correction_is_added_in_fp32_before_the_one_rounding(cuda):
    """bf16 inputs and a large start state, whose contribution nearly cancels the zero-start output in places:
    rounding the zero-start output to bf16 before adding the correction would cost many ulps of the sum there.
    Every output is within one bf16 rounding (plus fp32 noise) of the exact fp64 result."""
    module, _ = cuda
    inputs = scan_inputs(torch.Generator().manual_seed(6), Bn=2, D=16, L=64, N=8, dtype=torch.bfloat16,
                         state_scale=30.0)
    with torch.no_grad():
        y, _ = module.selective_scan(**inputs)
    exact, _ = torch_ops.selective_scan(**{k: v.double() for k, v in inputs.items()})
    err = (y.double() - exact).abs() / exact.abs().clamp_min(1e-3)
    assert err.max().item() <= BF16_ULP


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_zero_start_state_skips_the_correction_and_the_fp32_kernel_call(cuda, monkeypatch, dtype):
    module, kernels = cuda
    computed = []
    contribution = module.start_state_contribution
    monkeypatch.setattr(module, "start_state_contribution", lambda *a: computed.append(1) or contribution(*a))
    inputs = scan_inputs(torch.Generator().manual_seed(8), L=16, dtype=dtype)
    zero_start = dict(inputs, ssm_state=torch.zeros_like(inputs["ssm_state"]))
    with torch.no_grad():
        y, s = module.selective_scan(**zero_start)
        assert computed == [] and kernels.calls[-1][1]["u"].dtype == dtype  # rounded once, by the kernel
        y_ref, s_ref = torch_ops.selective_scan(**zero_start)
        module.selective_scan(**inputs)
    assert computed == [1] and kernels.calls[-1][1]["u"].dtype == torch.float32
    assert torch.equal(y, y_ref) and torch.equal(s, s_ref)


# --- autograd -------------------------------------------------------------------------------------------------------

def test_with_gradients_the_torch_ops_run_and_every_gradient_flows(cuda):
    """The kernels ignore the last state's gradient and the decode kernels have no backward: where autograd records,
    the PyTorch ops run, so the gradients (start state included) equal theirs and no kernel is called."""
    module, kernels = cuda
    for L in (1, 12):
        inputs = scan_inputs(torch.Generator().manual_seed(L), L=L)
        leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        ref_leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        y, s = module.selective_scan(**leaves)
        (y.sum() + s.square().sum()).backward()
        y_ref, s_ref = torch_ops.selective_scan(**ref_leaves)
        (y_ref.sum() + s_ref.square().sum()).backward()
        for k in leaves:
            torch.testing.assert_close(leaves[k].grad, ref_leaves[k].grad, rtol=1e-6, atol=1e-6)
        x = torch.randn(2, 8, L, requires_grad=True)
        w, b = torch.randn(8, 4, requires_grad=True), torch.randn(8, requires_grad=True)
        y, state = module.causal_conv1d(x, w, b, torch.randn(2, 8, 4))
        (y.sum() + state.sum()).backward()
        assert x.grad is not None and w.grad is not None and b.grad is not None
    assert kernels.calls == []


def test_kernels_run_when_autograd_would_record_nothing(cuda):
    """Grad mode on but no input requiring grad (e.g. a model with requires_grad_(False)): nothing to record, so the
    kernels run; the same inputs with one leaf requiring grad go to the PyTorch ops."""
    module, kernels = cuda
    inputs = scan_inputs(torch.Generator().manual_seed(9), L=12)
    module.selective_scan(**inputs)
    assert kernels.names() == ["selective_scan_fn"]
    module.selective_scan(**dict(inputs, D=inputs["D"].clone().requires_grad_()))
    assert kernels.names() == ["selective_scan_fn"]


def test_a_model_trains_through_the_cuda_ops(cuda):
    """The demo model's training loop on these ops: the loss gradient reaches every parameter."""
    module, kernels = cuda
    lm = tiny_lm()
    lm.ops_override = kernel_ops(module)
    logits, _ = lm(torch.randint(0, TINY.vocab_size, (2, 16), generator=torch.Generator().manual_seed(10)))
    logits.logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in lm.parameters()) and kernels.calls == []
