"""int8 weight-only quantisation (`cobra_app.model.quantize`): symmetric scales per group of INT8_GROUP weights of a
row, what is quantised, the copy the benchmark decodes with."""

import torch

from cobra_app.model.mamba import MambaLM
from cobra_app.model.ops.torch_ops import INT8_GROUP, dequantize
from cobra_app.model.quantize import QMAX, bf16_at_least, quantize_groups, quantize_lm_, quantized_copy
from tests.model import test_mamba as tm


def test_each_group_of_a_row_gets_its_symmetric_scale_and_rounds_to_the_nearest_step():
    g = torch.Generator().manual_seed(0)
    K = 3 * INT8_GROUP + 20  # a short last group
    w = torch.randn(37, K, generator=g) * torch.logspace(-3, 1, 37)[:, None]  # rows of very different ranges
    w[:, :INT8_GROUP] *= 100  # a group far larger than the rest of its row: its step must not be theirs
    w[5] = 0.0
    w[6, INT8_GROUP : 2 * INT8_GROUP] = 0.0
    q, scale = quantize_groups(w.bfloat16())
    groups = -(-K // INT8_GROUP)
    assert q.dtype == torch.int8 and scale.dtype == torch.bfloat16 and scale.shape == (37, groups)
    assert q.abs().max() <= QMAX and (scale[5] == 1).all() and not q[5].any() and scale[6, 1] == 1
    w = w.bfloat16().float()
    group = torch.arange(K) // INT8_GROUP
    peaks = torch.stack([w[:, group == i].abs().amax(dim=1) for i in range(groups)], dim=1)  # [37, groups]
    scale = scale.float()
    exact = peaks[peaks > 0] / QMAX  # each scale: the bf16 at or just above its group's peak / 127
    assert (scale[peaks > 0] >= exact).all() and (scale[peaks > 0] < exact * (1 + 2.0**-7)).all()
    for i in range(groups):  # each group's largest weight maps to +-127 (or 126: the scale is rounded up)
        assert (q[:, group == i].abs().amax(dim=1)[peaks[:, i] > 0] >= QMAX - 1).all()
    per_weight = scale[:, group]
    error = (q.float() * per_weight - w).abs()
    assert (error <= per_weight / 2 + w.abs() * 2.0**-22).all()  # half a step of its own group, plus fp32 rounding
    assert torch.equal(dequantize(q, scale, torch.float32), q.float() * per_weight)


def test_large_matrices_are_quantised_a_block_of_rows_at_a_time_with_the_same_result():
    w = torch.randn(5000, 1000, generator=torch.Generator().manual_seed(1))  # several 16 MB blocks, K % 64 = 40
    q, scale = quantize_groups(w)
    group = torch.arange(1000) // INT8_GROUP
    s = bf16_at_least(torch.stack([w[:, group == i].abs().amax(dim=1) for i in range(scale.shape[1])], dim=1) / QMAX)
    assert torch.equal(scale, s) and torch.equal(q, torch.round(w / s.float()[:, group]).to(torch.int8))


def test_a_scale_is_the_nearest_bf16_at_or_above_the_value():
    values = torch.rand(10000, generator=torch.Generator().manual_seed(2)) * 10.0 ** torch.randint(-8, 2, (10000,))
    up = bf16_at_least(values).float()
    step_below = (bf16_at_least(values).view(torch.int16) - 1).view(torch.bfloat16).float()
    assert (up >= values).all() and (step_below < values).all()


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
