"""The sizing table's numbers are what the model really stores: checked against tensors a tiny model produces."""

import torch

from cobra_app.loading.registry import MODELS
from cobra_app.model.mamba import MambaState
from cobra_app.pipeline import Cobra
from cobra_app.scale.sizing import main, store_sizes
from tests.helpers import make_tiny_vlm, sample_image


def test_sizes_match_the_tensors_of_a_real_prefill():
    vlm, tokenizer = make_tiny_vlm()
    cobra = Cobra(vlm, tokenizer, "tiny")
    with torch.no_grad():
        embeds = cobra.encode_image(sample_image())
        logits, state = cobra.prefill(torch.tensor([[5, 6, 7]]), embeds, None, logits_to_keep=1)
    sizes = store_sizes(vlm.config, torch.float32)
    assert sizes.state == state.nbytes
    assert sizes.logits == logits[0, -1].numel() * logits.element_size()
    assert sizes.embeds == embeds[0].numel() * embeds.element_size()
    bf16_state = MambaState.zeros(vlm.config.llm, dtype=torch.bfloat16)
    assert store_sizes(vlm.config, torch.bfloat16).state == bf16_state.nbytes


def test_cobra_3b_state_is_about_24_mb_in_bf16_and_the_table_prints(capsys):
    sizes = store_sizes(MODELS["cobra+3b"].config, torch.bfloat16)
    assert sizes.state == 64 * 5120 * (4 * 2 + 16 * 4)  # layers x d_inner x (conv bf16 + scan fp32)
    assert main([]) == 0 and "| bfloat16 | 23.6 MB |" in capsys.readouterr().out
    assert main(["no-such-model"]) == 2
