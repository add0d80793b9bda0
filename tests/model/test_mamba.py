"""MambaLM: exact continuation from saved states, decoding steps, the state object and release key names."""

import random

import pytest
import torch

from cobra_app.model.mamba import FP32_PARAM_SUFFIXES, MambaConfig, MambaLM, MambaState

TINY = MambaConfig(d_model=32, n_layer=3, vocab_size=203, d_state=8, d_conv=4)


def tiny_lm(dtype=torch.float32, seed=0) -> MambaLM:
    lm = MambaLM(TINY).init_weights(torch.Generator().manual_seed(seed))
    with torch.no_grad():  # larger dt and D than the init so that every part of the state matters
        for block in lm.backbone.layers:
            block.mixer.dt_proj.bias.add_(2.0)
    return lm.cast(dtype)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: error relative to the tensor's scale."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def random_split(total: int, rng: random.Random) -> list[int]:
    """Chunk lengths covering `total`: singles, chunks shorter than d_conv, and long chunks."""
    sizes = []
    while sum(sizes) < total:
        sizes.append(min(rng.choice([1, 1, 2, 3, 5, 17, 64, 150]), total - sum(sizes)))
    return sizes


def run_in_chunks(lm, ids, sizes):
    state, logits = None, []
    for start, size in zip([0] + list(torch.tensor(sizes).cumsum(0)[:-1].tolist()), sizes):
        out, state = lm(ids[:, start : start + size], state=state)
        logits.append(out)
    return torch.cat(logits, dim=1), state


@pytest.mark.parametrize("seed", range(4))
def test_continuation_equals_single_pass_fp32(seed):
    lm = tiny_lm()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, TINY.vocab_size, (2, 300), generator=g)
    sizes = random_split(300, random.Random(seed))
    with torch.no_grad():
        full, full_state = lm(ids)
        chunked, chunked_state = run_in_chunks(lm, ids, sizes)
    assert rel_err(chunked, full) <= 1e-5, sizes
    for a, b in zip(chunked_state.layers, full_state.layers):
        assert rel_err(a.ssm, b.ssm) <= 1e-5 and rel_err(a.conv, b.conv) <= 1e-5
    assert chunked_state.seqlen == full_state.seqlen == 300


def test_continuation_bf16_within_rounding_bound():
    """bf16 weights: chunk boundaries change only the shapes of the bf16 matmuls, whose rounding (unit roundoff
    2^-8 = 3.9e-3 on the outputs) may then differ by an ulp; the fp32 residual/scan keep that from compounding.
    Bound: 1e-2 relative, about 2.5 bf16 ulps, on logits and states (measured here: well below)."""
    lm = tiny_lm(torch.bfloat16)
    ids = torch.randint(0, TINY.vocab_size, (1, 200), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        full, full_state = lm(ids)
        chunked, chunked_state = run_in_chunks(lm, ids, [1, 3, 2, 64, 1, 129])
    assert rel_err(chunked, full) <= 1e-2
    for a, b in zip(chunked_state.layers, full_state.layers):
        assert rel_err(a.ssm, b.ssm) <= 1e-2


def test_bf16_tracks_fp32():
    """The bf16 model computes the same function as fp32 up to bf16 rounding of the matmuls."""
    ids = torch.randint(0, TINY.vocab_size, (1, 64), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        ref, _ = tiny_lm(torch.float32)(ids)
        out, _ = tiny_lm(torch.bfloat16)(ids)
    assert rel_err(out, ref) <= 5e-2


def test_step_equals_forward():
    lm = tiny_lm()
    ids = torch.randint(0, TINY.vocab_size, (2, 12), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        full, full_state = lm(ids)
        state = lm.initial_state(2)
        for t in range(12):
            logits, state = lm.step(ids[:, t], state)
            assert rel_err(logits, full[:, t]) <= 1e-5
    assert state.max_abs_diff(full_state) <= 1e-5


def test_prefix_embeddings_then_tokens():
    """inputs_embeds (e.g. image patches) followed by token ids equals one pass over the concatenated embeddings."""
    lm = tiny_lm()
    ids = torch.randint(0, TINY.vocab_size, (1, 10), generator=torch.Generator().manual_seed(10))
    patches = torch.randn(1, 6, TINY.d_model)
    with torch.no_grad():
        full, _ = lm(inputs_embeds=torch.cat([patches, lm.embed(ids)], dim=1))
        _, state = lm(inputs_embeds=patches)
        cont, _ = lm(ids, state=state, logits_to_keep=1)
    assert rel_err(cont[:, -1], full[:, -1]) <= 1e-5


def test_logits_at_some_positions_are_those_of_the_full_pass():
    """`logits_at` (training: the positions with a target) gives those positions' logits, row-major, and the same
    state; gradients flow from them as from the full logits."""
    lm = tiny_lm()
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(0, TINY.vocab_size, (3, 9), generator=g)
    at = torch.rand(3, 9, generator=g) < 0.3
    at[1] = False  # a row with no targeted position
    full, full_state = lm(ids)
    some, state = lm(ids, logits_at=at)
    assert some.shape == (int(at.sum()), lm.config.padded_vocab_size)
    assert rel_err(some, full[at]) <= 1e-6
    assert state.max_abs_diff(full_state) == 0
    weights = torch.randn(some.shape, generator=g)
    grads = torch.autograd.grad((some * weights).sum(), list(lm.parameters()), allow_unused=True)
    grads_ref = torch.autograd.grad((full[at] * weights).sum(), list(lm.parameters()), allow_unused=True)
    for got, want in zip(grads, grads_ref, strict=True):
        assert (got is None) == (want is None)
        if got is not None:
            assert rel_err(got, want) <= 1e-5


def test_state_passed_in_is_never_modified():
    lm = tiny_lm()
    ids = torch.randint(0, TINY.vocab_size, (1, 8))
    with torch.no_grad():
        _, state = lm(ids)
        before = state.clone()
        lm(ids, state=state)
        lm.step(ids[:, 0], state)
    assert state.max_abs_diff(before) == 0.0 and state.seqlen == before.seqlen


def test_batched_equals_single_and_stack_roundtrip():
    lm = tiny_lm()
    g = torch.Generator().manual_seed(11)
    a, b = (torch.randint(0, TINY.vocab_size, (1, 9), generator=g) for _ in range(2))
    nxt = torch.randint(0, TINY.vocab_size, (2,), generator=g)
    with torch.no_grad():
        _, sa = lm(a)
        _, sb = lm(b[:, :5])  # different lengths: states are stacked, not sequences
        batched = MambaState.stack([sa, sb])
        logits, out = lm.step(nxt, batched)
        la, oa = lm.step(nxt[:1], sa)
        lb, ob = lm.step(nxt[1:], sb)
    assert batched.seqlen == -1 and batched.batch_size == 2
    assert rel_err(logits[0], la[0]) <= 1e-5 and rel_err(logits[1], lb[0]) <= 1e-5
    ua, ub = out.unstack([sa.seqlen + 1, sb.seqlen + 1])
    assert ua.max_abs_diff(oa) <= 1e-5 and ub.max_abs_diff(ob) <= 1e-5
    assert (ua.seqlen, ub.seqlen) == (10, 6)


def test_state_size_is_fixed_and_measured():
    lm = tiny_lm()
    s = lm.initial_state()
    D, N, K = TINY.d_inner, TINY.d_state, TINY.d_conv
    assert s.nbytes == TINY.n_layer * D * (N + K) * 4
    with torch.no_grad():
        _, s_long = lm(torch.zeros(1, 500, dtype=torch.long))
    assert s_long.nbytes == s.nbytes
    assert s.clone().layers[0].ssm.data_ptr() != s.layers[0].ssm.data_ptr()


def test_cobra_3b_state_is_about_26_mb():
    cfg = MambaConfig(d_model=2560, n_layer=64, vocab_size=50277)
    assert cfg.padded_vocab_size == 50280 and cfg.dt_rank_value == 160 and cfg.d_inner == 5120
    assert MambaState.zeros(cfg, device="meta").nbytes == 64 * 5120 * 20 * 4  # 26.2 MB in fp32


def test_parameter_names_match_mamba_ssm_layout():
    lm = tiny_lm()
    D, N, K, R, d = TINY.d_inner, TINY.d_state, TINY.d_conv, TINY.dt_rank_value, TINY.d_model
    expected = {"backbone.embedding.weight": (TINY.padded_vocab_size, d), "backbone.norm_f.weight": (d,),
                "lm_head.weight": (TINY.padded_vocab_size, d)}
    for i in range(TINY.n_layer):
        p = f"backbone.layers.{i}."
        expected.update({
            p + "norm.weight": (d,), p + "mixer.in_proj.weight": (2 * D, d), p + "mixer.conv1d.weight": (D, 1, K),
            p + "mixer.conv1d.bias": (D,), p + "mixer.x_proj.weight": (R + 2 * N, D), p + "mixer.dt_proj.weight": (D, R),
            p + "mixer.dt_proj.bias": (D,), p + "mixer.A_log": (D, N), p + "mixer.D": (D,),
            p + "mixer.out_proj.weight": (d, D),
        })
    assert {k: tuple(v.shape) for k, v in lm.state_dict().items()} == expected
    assert lm.lm_head.weight is lm.backbone.embedding.weight


def test_cast_keeps_small_parameters_fp32():
    lm = tiny_lm(torch.bfloat16)
    for name, p in lm.named_parameters():
        assert p.dtype == (torch.float32 if name.endswith(FP32_PARAM_SUFFIXES) else torch.bfloat16), name


def test_mamba_ssm_config_is_read():
    cfg = MambaConfig.from_mamba_ssm(
        {"d_model": 2560, "n_layer": 64, "vocab_size": 50277, "ssm_cfg": {}, "rms_norm": True,
         "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8}
    )
    assert (cfg.d_model, cfg.n_layer, cfg.padded_vocab_size, cfg.d_state, cfg.d_conv) == (2560, 64, 50280, 16, 4)
    with pytest.raises(ValueError, match="Mamba-1"):
        MambaConfig.from_mamba_ssm({"d_model": 8, "n_layer": 1, "vocab_size": 8, "ssm_cfg": {"layer": "Mamba2"}})


def test_training_gradients_reach_every_parameter():
    lm = tiny_lm()
    ids = torch.randint(0, TINY.vocab_size, (2, 20))
    logits, _ = lm(ids[:, :-1])
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
    for name, p in lm.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_empty_chunk_is_refused():
    with pytest.raises(ValueError, match="at least one token"):
        tiny_lm()(torch.zeros(1, 0, dtype=torch.long))


def test_cached_A_follows_A_log_in_eval_and_is_fresh_in_training():
    lm = tiny_lm().eval()
    mixer = lm.backbone.layers[0].mixer
    with torch.no_grad():
        first = mixer.A()
        assert mixer.A() is first and torch.equal(first, -torch.exp(mixer.A_log))  # kept while A_log is unchanged
        mixer.A_log.add_(0.5)  # an in-place update
        assert torch.equal(mixer.A(), -torch.exp(mixer.A_log))
        state = {k: v.clone() for k, v in lm.state_dict().items()}
        state[[k for k in state if k.endswith("0.mixer.A_log")][0]] -= 1.0
        lm.load_state_dict(state)  # loading weights
        assert torch.equal(mixer.A(), -torch.exp(mixer.A_log))
    lm.train()
    assert mixer.A() is not mixer.A() and mixer.A().requires_grad  # training: recomputed, differentiable
