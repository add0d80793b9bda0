"""The one public model object and its loader: load a model, ask about an image, generate or score, in a few lines.

    from cobra_app import load
    cobra = load("cobra+3b")                                   # or "assets/demo-model", a hub path, a run dir
    cobra = load("runs/my-run", llm="models/mamba-2.8b-zephyr", vision="models/vision")   # a run, offline
    print(cobra.generate("photo.jpg", "What is in the image?"))
    print(cobra.score("photo.jpg", "Is there a dog in the image?"))   # {'Yes': 0.91, 'No': 0.09}

`Cobra` is what every part of the app holds (sessions, UI, CLI, probe, bench): the network (`.vlm`, a `CobraVLM`
nn.Module, see `model/cobra.py` for why the network is a separate object), its tokenizer, prompt format and source.
Its own calls are single-turn and stateless; multi-turn conversations with cached state live in `cobra_app.sessions`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from cobra_app.generation import Decoder, SamplingParams, TextStreamer, get_answer_pair
from cobra_app.loading import read_model
from cobra_app.model.cobra import CobraConfig, CobraVLM
from cobra_app.model.mamba import MambaState
from cobra_app.model.ops import cpu_kernel
from cobra_app.prompting import TurnTokenizer, get_prompt_builder

ImageInput = Image.Image | str | Path | None


class Cobra:
    """A Cobra model ready for inference: the network, its tokenizer, its prompt format, and where it came from."""

    def __init__(self, vlm: CobraVLM, tokenizer: PreTrainedTokenizerBase, source: str):
        self.vlm = vlm
        self.tokenizer = tokenizer
        self.source = source
        self.turns = TurnTokenizer(tokenizer, get_prompt_builder(vlm.config.prompt_format))

    @property
    def config(self) -> CobraConfig:
        return self.vlm.config

    @property
    def device(self) -> torch.device:
        return self.vlm.device

    @property
    def vocab_size(self) -> int:
        """Tokens the tokenizer can produce (the model's embedding rows beyond it are padding)."""
        return len(self.tokenizer)

    def info(self) -> dict[str, str | int]:
        """What runs: model id, source, device, weights' and compute dtype and why, parameter count, Mamba ops path,
        the CPU kernels' state and variant, state size."""
        precision = self.vlm.precision
        return {
            "model_id": self.config.model_id,
            "source": self.source,
            "device": str(self.device),
            "dtype": str(precision.weights).removeprefix("torch."),
            "compute_dtype": str(precision.compute).removeprefix("torch."),
            "precision": precision.reason,
            "parameters": sum(p.numel() for p in self.vlm.parameters()),
            "ops": self.vlm.llm.ops.name,
            "cpu_kernels": cpu_kernel.status() if self.device.type == "cpu" else "",
            "state_bytes": self.vlm.llm.initial_state().nbytes,
        }

    @torch.no_grad()
    def identity(self) -> str:
        """What makes two loaded models' states interchangeable, as a hex digest: the config, every weight tensor's
        name, shape, dtype and an evenly spaced sample of 64 of its values, the compute dtype (a state's conv part is
        in it), the Mamba ops path and the device type. Computed once (a fraction of a second at cobra+3b sizes); keys
        the conversation states on disk."""
        if getattr(self, "_identity", None) is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(json.dumps([self.config.to_dict(), str(self.vlm.compute_dtype), self.vlm.llm.ops.name,
                                 self.device.type]).encode())
            for name, tensor in sorted(self.vlm.state_dict().items()):
                flat = tensor.detach().reshape(-1)
                k = min(64, flat.numel())
                sample = flat[torch.arange(k, device=flat.device) * (flat.numel() - 1) // max(k - 1, 1)]
                h.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
                h.update(sample.float().cpu().numpy().tobytes())
            self._identity = h.hexdigest()
        return self._identity

    @torch.no_grad()
    def encode_image(self, image: Image.Image | str | Path) -> Tensor:
        """An image (or its path) -> projected patch embeddings [1, P, d_model]."""
        if not isinstance(image, Image.Image):
            image = Image.open(image)
        pixels = {k: v[None] for k, v in self.vlm.image_transform(image).items()}
        return self.vlm.encode_images(pixels)

    @torch.no_grad()
    def prefill(self, input_ids: Tensor, image_embeds: Tensor | None = None, state: MambaState | None = None,
                logits_to_keep: int = 1) -> tuple[Tensor, MambaState]:
        """Read [image patches] + input_ids [B, L] on top of `state` (None: the start); image_embeds [B, P, d].
        Returns (logits [B, logits_to_keep, V] fp32, new state)."""
        return self.vlm.prefill(input_ids, image_embeds, state, logits_to_keep=logits_to_keep)

    @torch.no_grad()
    def step(self, input_ids: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        """Decode one token per sequence: input_ids [B] -> (logits [B, V] fp32, new state)."""
        return self.vlm.llm.step(input_ids, state)

    def capture_step_graphs(self, batch_sizes: Iterable[int]) -> list[int]:
        """Capture the CUDA graphs of `step` for these batch sizes now (`MambaLM.capture_step_graphs`): the sessions'
        `BatchedStepper` does so when it is created. Returns the sizes captured ([] on CPU)."""
        return self.vlm.llm.capture_step_graphs(batch_sizes)

    @torch.no_grad()
    def read_prompt(self, image: ImageInput, question: str) -> tuple[Tensor, MambaState, list[int]]:
        """Prefill [image patches] + the first user turn -> (logits at the first answer position [V], state, ids)."""
        ids = self.turns.user_turn_ids(question, first=True)
        embeds = None if image is None else self.encode_image(image)
        logits, state = self.prefill(torch.tensor([ids], device=self.device), embeds)
        return logits[0, -1], state, ids

    def stream(
        self,
        image: ImageInput,
        question: str,
        params: SamplingParams | None = None,
        stop_event: threading.Event | None = None,
    ) -> Iterator[str]:
        """Yield the reply's text as it is generated (never half a UTF-8 character)."""
        logits, state, ids = self.read_prompt(image, question)
        decoder = Decoder(
            self, logits, state, params or SamplingParams(), self.turns.eos_id,
            stop_event=stop_event, history_ids=ids, streamer=TextStreamer(self.tokenizer), vocab_size=self.vocab_size,
        )
        for event in decoder:
            if event.text:
                yield event.text

    def generate(self, image: ImageInput, question: str, params: SamplingParams | None = None, **overrides) -> str:
        """The whole reply, stripped as the release's `generate` returns it (greedy by default; `overrides` are
        SamplingParams fields, e.g. max_new_tokens=64). `stream` yields the text as generated, unstripped."""
        params = dataclasses.replace(params or SamplingParams(), **overrides)
        return "".join(self.stream(image, question, params)).strip()

    def score(self, image: ImageInput, question: str, answers: str = "yes-no") -> dict[str, float]:
        """Closed-set scoring (paper protocol): P(answer) over a single-token pair ("yes-no" or "true-false"),
        read at the first generated position and renormalised over the pair."""
        pair = get_answer_pair(answers)
        logits, _, _ = self.read_prompt(image, question)
        return dict(zip(pair.words, pair.probs(logits, self.turns)))


def load(
    source: str | Path = "cobra+3b",
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    *,
    llm: str | Path | None = None,
    vision: str | Path | None = None,
) -> Cobra:
    """Load a model by registry id (`cobra+3b`), hub path, run directory or self-contained model directory, for
    inference on `device` ("auto": CUDA when present) in `dtype` ("auto": bf16 on CUDA and for large models on CPU,
    computed in fp32 where the CPU's bf16 arithmetic is slow; "int8": int8 LM matrices on CPU; see
    `loading.precision`; `cobra.info()` says what was chosen and why).

    For a run in the release layout, `llm` is a local mamba_ssm-format LLM directory (config.json + tokenizer files)
    or a hub repo, in place of the backbone's hub repo; `vision` a directory of timm-format safetensors, one per
    vision tower (`<timm model name>.safetensors`), or a hub cache holding them, in place of timm's hub."""
    vlm, tokenizer = read_model(source, llm=llm, vision=vision, device=device, dtype=dtype)
    return Cobra(vlm, tokenizer, str(source))
