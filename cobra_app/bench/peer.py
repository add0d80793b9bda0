"""The peer for speed comparisons: transformers' `MambaForCausalLM` on the same weights and dtype as our MambaLM."""

from __future__ import annotations

import torch
from transformers import MambaConfig as HFMambaConfig
from transformers import MambaForCausalLM

from cobra_app.model.mamba import MambaLM


def transformers_peer(lm: MambaLM) -> MambaForCausalLM:
    """transformers' Mamba holding our weights (large matrices shared, not copied; every tensor in lm.dtype, as
    transformers expects one dtype). Names differ only in `backbone.embeddings`."""
    cfg = lm.config
    hf_config = HFMambaConfig(
        vocab_size=cfg.padded_vocab_size, hidden_size=cfg.d_model, state_size=cfg.d_state,
        num_hidden_layers=cfg.n_layer, layer_norm_epsilon=cfg.rms_norm_eps, expand=cfg.expand,
        conv_kernel=cfg.d_conv, time_step_rank=cfg.dt_rank_value, use_bias=False, use_conv_bias=True,
        residual_in_fp32=True, tie_word_embeddings=True, pad_token_id=0, bos_token_id=0, eos_token_id=0,
    )
    with torch.device("meta"):
        peer = MambaForCausalLM(hf_config)
    state = {
        k.replace("backbone.embedding.", "backbone.embeddings."): v.to(lm.dtype) for k, v in lm.state_dict().items()
    }
    peer.load_state_dict(state, assign=True, strict=True)
    peer.tie_weights()
    return peer.eval()
