"""int8 weight-only quantisation (`cobra_app.model.quantize`): per-row symmetric scales, what is quantised, the copy
the benchmark decodes with."""

import torch

from cobra_app.model.mamba import MambaLM
from cobra_app.model.quantize import QMAX, quantize_lm_, quantize_rows, quantized_copy
from tests.model import test_mamba as tm


def test_rows_get_symmetric_scales_and_round_to_the_nearest_step():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(37, 300, generator=g) * torch.logspace(-3, 1, 37)[:, None]  # rows of very different ranges
    w[5] = 0.0
    q, scale = quantize_rows(w.bfloat16())
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (37,)
    assert q.abs().max() <= QMAX and scale[5] == 1 and not q[5].any()
    w = w.bfloat16().float()
    peaks = w.abs().amax(dim=1)
    torch.testing.assert_close(scale[peaks > 0], peaks[peaks > 0] / QMAX)
    assert (q[peaks > 0].abs().amax(dim=1) == QMAX).all()  # each row's largest weight maps to +-127
    error = (q.float() * scale[:, None] - w).abs()
    assert (error <= scale[:, None] / 2 + w.abs() * 2.0**-22).all()  # half a step, plus fp32 rounding


def test_large_matrices_are_quantised_a_block_of_rows_at_a_time_with_the_same_result():
    w = torch.randn(5000, 1000, generator=torch.Generator().manual_seed(1))  # several 16 MB blocks
    q, scale = quantize_rows(w)
    s = w.abs().amax(dim=1) / QMAX
    assert torch.equal(scale, s) and torch.equal(q, torch.round(w / s[:, None]).to(torch.int8))


def test_every_matrix_a_decode_step_reads_becomes_int8():
    """The four projections of each layer and the LM head; the embedding keeps its float rows (the lookup)."""
    lm = quantize_lm_(tm.tiny_lm())
    int8 = {name for name, p in lm.named_parameters() if p.dtype == torch.int8}
    assert int8 == {f"backbone.layers.{i}.mixer.{m}.weight" for i in range(tm.TINY.n_layer)
                    for m in ("in_proj", "x_proj", "dt_proj", "out_proj")} | {"lm_head.weight"}
    assert lm.backbone.embedding.weight.dtype == torch.float32
    assert not any(p.requires_grad for p in lm.parameters() if p.dtype == torch.int8)
    scales = {name for name, _ in lm.named_buffers()}
    assert scales == {name.replace(".weight", ".weight_scale") for name in int8}


def test_the_copy_shares_every_other_tensor_and_leaves_the_original_alone():
    lm = tm.tiny_lm()
    before = {name: p.clone() for name, p in lm.named_parameters()}
    twin = quantized_copy(lm)
    assert isinstance(twin, MambaLM)
    assert lm.lm_head.weight is lm.backbone.embedding.weight  # the original's tie stays
    for name, p in lm.named_parameters():
        assert torch.equal(p, before[name]) and p.dtype == torch.float32
    twin_params = dict(twin.named_parameters(remove_duplicate=False))
    for name, p in lm.named_parameters(remove_duplicate=False):
        assert (twin_params[name] is p) == (twin_params[name].dtype != torch.int8), name  # shared unless quantised
    assert twin.backbone.embedding.weight is lm.backbone.embedding.weight and twin.lm_head.weight.dtype == torch.int8
