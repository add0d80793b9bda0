"""Shared test helpers: a tiny GPT-NeoX-like tokenizer trained in-process (tests never download anything)."""

from collections.abc import Iterator
from functools import lru_cache

import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS, PAD = "<|endoftext|>", "<|padding|>"
# GPT-NeoX also has non-special added tokens for runs of spaces; user text must keep matching them.
SPACE_RUNS = ("    ", "   ", "  ")

# Chat-shaped training text: the Zephyr and base templates, punctuation, digits, newlines, accents, CJK and emoji
# (rare multi-byte characters stay split over several byte-level tokens, which streaming tests rely on).
CORPUS_LINES = (
    "<|user|>\nWhat is in the image?<|endoftext|>\n<|assistant|>\nA cat sitting on a red sofa.<|endoftext|>",
    "\n<|user|>\nIs there a dog? Answer yes or no.<|endoftext|>\n<|assistant|>\nNo<|endoftext|>",
    "\n<|user|>\nIs the cup left of the plate?<|endoftext|>\n<|assistant|>\nYes<|endoftext|>",
    "In: Describe the picture.\nOut: Two people walk along the beach at sunset.",
    "\nIn: True or false: the sky is green.\nOut: False",
    "\n<|user|>\nThe ball is under the lamp. True or False?<|endoftext|>\n<|assistant|>\nTrue<|endoftext|>",
    "\n<|user|>\nThe cube is above the ball. True or False?<|endoftext|>\n<|assistant|>\nFalse<|endoftext|>",
    "The answer is True. That is not False, it's true!",
    "Numbers: 1, 2, 3, 42, 2024, 3.14 and 100%; (brackets) [square] {curly} \"quotes\" 'single' - dash.",
    "def main():\n    return {'key': [1, 2, 3]}  # code with  double   spaces\n\tand a tab",
    "Café, naïve, façade, déjà vu, Über, Ελληνικά, Русский текст.",
    "中文文本，你好世界。日本語のテキスト。한국어 문장.",
    "emoji 🙂 and 🐍 and 👍🏽 and a flag 🇫🇷.",
    "Yes. No. True. False. yes no true false",
    "A small red ball is on the left of a large blue cube under a green lamp.",
)


@lru_cache
def _trained_tokenizer_json() -> str:
    """Train the byte-level BPE once per process; return it serialized."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=[EOS, PAD],  # ids 0 and 1, as in GPT-NeoX
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(CORPUS_LINES) * 20, trainer)
    tok.add_tokens([AddedToken(run, normalized=True) for run in SPACE_RUNS])
    return tok.to_str()


def make_test_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh GPT-NeoX-like tokenizer: ByteLevel BPE, `<|endoftext|>` = 0 (EOS), `<|padding|>` = 1, no BOS added."""
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json()),
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=PAD,
    )


def tiny_cobra_config(vocab_size: int, model_id: str = "tiny-cobra"):
    """A Cobra of the release's architecture in miniature (tiny DINOv2+SigLIP, fused-gelu-mlp, 2-layer Mamba)."""
    from cobra_app.model.cobra import CobraConfig
    from cobra_app.model.mamba import MambaConfig
    from cobra_app.model.vision import VISION_BACKBONES

    return CobraConfig(
        model_id=model_id,
        arch_specifier="no-align+fused-gelu-mlp",
        vision=VISION_BACKBONES["tiny-dinosiglip-32px"],
        llm=MambaConfig(d_model=32, n_layer=2, vocab_size=vocab_size, d_state=8),
        llm_max_length=256,
    )


def make_tiny_vlm(seed: int = 0):
    """(CobraVLM with random weights, its tokenizer): built in well under a second."""
    import torch

    from cobra_app.model.cobra import CobraVLM

    tokenizer = make_test_tokenizer()
    torch.manual_seed(seed)
    vlm = CobraVLM(tiny_cobra_config(len(tokenizer)))
    vlm.llm.init_weights(torch.Generator().manual_seed(seed))
    return vlm.eval(), tokenizer


def reading_columns(vlm):
    """A copy of `vlm` (a CobraVLM) with the same weights and mode that reads the image patches column by column."""
    import dataclasses

    from cobra_app.model.cobra import CobraVLM

    columns = CobraVLM(dataclasses.replace(vlm.config, image_token_order="columns"))
    columns.load_state_dict(vlm.state_dict())
    return columns.train(vlm.training)


def make_tiny_cobra(seed: int = 0):
    """`make_tiny_vlm` as a `Cobra` (frozen weights), the object the app, the sessions and the API serve."""
    from cobra_app.pipeline import Cobra

    vlm, tokenizer = make_tiny_vlm(seed)
    return Cobra(vlm.requires_grad_(False), tokenizer, "tiny")


def sample_image(width: int = 45, height: int = 30, seed: int = 0):
    """A deterministic non-square RGB test image with structure (gradients + noise)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), rng.integers(0, 256, (height, width))], -1)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


# --- release-layout runs and an offline hub cache (nothing is ever downloaded) ---------------------------------------
TINY_LLM_BACKBONE, TINY_LLM_REPO = "tiny-mamba-zephyr", "tiny/mamba-zephyr"


def refuse_network(monkeypatch) -> list:
    """Record and refuse every attempt to resolve a host name or open a connection (a refused call alone could be
    retried or swallowed by a library: tests assert the returned list stays empty)."""
    import socket

    attempts: list = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted in a test")

    for owner, name in ((socket.socket, "connect"), (socket.socket, "connect_ex"), (socket, "create_connection"),
                        (socket, "getaddrinfo")):
        monkeypatch.setattr(owner, name, refuse)
    return attempts


def offline_hub_cache(monkeypatch, cache) -> None:
    """huggingface_hub (and timm through it) reads `cache` as its hub cache, offline, as with HF_HUB_OFFLINE=1."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def register_tiny_llm(monkeypatch) -> None:
    """The tiny LLM backbone in the registry, its config and tokenizer said to be in the hub repo TINY_LLM_REPO."""
    from cobra_app.loading.registry import LLM_BACKBONES, LLMBackboneSpec

    monkeypatch.setitem(LLM_BACKBONES, TINY_LLM_BACKBONE, LLMBackboneSpec(TINY_LLM_REPO, TINY_LLM_REPO, "zephyr"))


def publish_tiny_llm(monkeypatch, cache, vlm, tokenizer) -> None:
    """Register the tiny LLM backbone and put its mamba_ssm config and tokenizer in the hub cache, as the hub would."""
    from cobra_app.bench.release_run import write_llm_repo

    register_tiny_llm(monkeypatch)
    write_llm_repo(cache, TINY_LLM_REPO, vlm.config.llm, tokenizer)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a busy shared CPU OpenMP's spinning makes them many
    times slower (a forked child must not reuse the parent's pool either): one thread, restored afterwards. Use it
    with `pytestmark = pytest.mark.usefixtures("one_torch_thread")` after importing it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
