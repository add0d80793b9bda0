"""Our MambaLM and transformers' MambaForCausalLM compute the same function on the same weights: an independent
implementation checks ours, and the benchmark's peer is a fair one."""

import torch

from cobra_app.bench.peer import transformers_peer
from cobra_app.model.mamba import MambaConfig, MambaLM


def test_same_logits_as_transformers_mamba_fp32():
    lm = MambaLM(MambaConfig(d_model=64, n_layer=3, vocab_size=301)).init_weights(torch.Generator().manual_seed(0))
    peer = transformers_peer(lm)
    ids = torch.randint(0, 301, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, _ = lm(ids)
        theirs = peer(ids).logits
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() <= 1e-5


def test_peer_decodes_with_its_cache():
    lm = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=101)).init_weights(torch.Generator().manual_seed(2))
    peer = transformers_peer(lm)
    ids = torch.randint(0, 101, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = peer(ids[:, :11], use_cache=True)
        step = peer(ids[:, 11:], cache=out.cache, use_cache=True).logits[:, -1]
        ours, _ = lm(ids)
    assert ((step - ours[:, -1]).abs().max() / ours.abs().max()).item() <= 1e-5
