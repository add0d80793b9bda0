"""The one closed-set scoring path shared by the probe runner and the demo model's evaluation.

Protocol (reference sections 6 and 7, as the paper evaluates VSR and POPE):
1. prompt: a Yes/No question is the user message as is; a True/False *statement* is wrapped in the VSR template
   `closed_set_prompt` (the same `TRUE_FALSE_PROMPT` the demo scene world trains on);
2. ids: the first user turn of the model's prompt format (`TurnTokenizer.user_turn_ids(prompt, first=True)`), image
   patch embeddings placed before all text tokens, one prefill from the zero state;
3. the logits of the first generated position, softmax over the vocabulary, the pair's two single tokens read and
   renormalised (`cobra_app.generation.closed_set_probs`);
4. the prediction is the positive word (Yes / True) when P(positive) >= P(negative) (`predict`).

Callers that score many prompts about one image encode it once (`encode_image`) and pass the embeddings to each
`score_prompt` call: the numbers are identical to `Cobra.score(image, prompt, answers)`. A caller with its own prefill
(the demo evaluation batches prompts of equal length) uses steps 3-4 alone: `predict(answer_probs(logits, turns,
answers), answers)`; `answers_for("Yes")` names the pair of a demo `QA`'s answer.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from cobra_app.demo.phrasing import TRUE_FALSE_PROMPT
from cobra_app.generation.scoring import ANSWER_PAIRS, get_answer_pair
from cobra_app.model.cobra import CobraVLM
from cobra_app.prompting.tokenization import TurnTokenizer

__all__ = ["TRUE_FALSE_PROMPT", "answer_probs", "answers_for", "closed_set_prompt", "encode_image", "predict",
           "score_prompt"]


def answers_for(word: str) -> str:
    """The name of the answer pair a word belongs to: "Yes"/"No" -> "yes-no", "True"/"False" -> "true-false"."""
    for name, pair in ANSWER_PAIRS.items():
        if word in pair.words:
            return name
    raise ValueError(f"{word!r} is not a closed-set answer; known pairs: {dict(ANSWER_PAIRS)}")


def closed_set_prompt(question: str, answers: str) -> str:
    """The user message for a case: `question` as is for "yes-no"; the VSR template around the statement for
    "true-false" (`TRUE_FALSE_PROMPT.format(statement=question)`)."""
    get_answer_pair(answers)  # validates the name
    return TRUE_FALSE_PROMPT.format(statement=question) if answers == "true-false" else question


@torch.no_grad()
def encode_image(vlm: CobraVLM, image: Image.Image | str | Path) -> Tensor:
    """An image (or its path) -> projected patch embeddings [1, P, d_model], exactly as `Cobra.encode_image`."""
    if not isinstance(image, Image.Image):
        with Image.open(image) as opened:
            image = opened.convert("RGB")
    pixels = {k: v[None] for k, v in vlm.image_transform(image).items()}
    return vlm.encode_images(pixels)


@torch.no_grad()
def score_prompt(
    vlm: CobraVLM, turns: TurnTokenizer, image_embeds: Tensor | None, prompt: str, answers: str
) -> tuple[float, float]:
    """(P(positive), P(negative)) for one user message (already built by `closed_set_prompt`), renormalised over
    the answer pair `answers` ("yes-no" or "true-false"). `image_embeds` [1, P, d] from `encode_image`, or None."""
    ids = turns.user_turn_ids(prompt, first=True)
    logits, _ = vlm.prefill(torch.tensor([ids], device=vlm.device), image_embeds)
    return answer_probs(logits[0, -1], turns, answers)


def answer_probs(logits: Tensor, turns: TurnTokenizer, answers: str) -> tuple[float, float]:
    """Step 3 alone, for callers that run their own (e.g. batched) prefill: the logits [V] of the first generated
    position -> (P(positive), P(negative)) renormalised over the pair. Logits restricted to the tokenizer's vocabulary
    (`logits[:len(tokenizer)]`) give the same values: the full-vocabulary normaliser cancels in the renormalisation."""
    return get_answer_pair(answers).probs(logits, turns)


def predict(probs: tuple[float, float], answers: str) -> str:
    """The predicted word from (P(positive), P(negative)): the positive word (Yes / True) when P(positive) >=
    P(negative), ties included, as `argmax` over (positive, negative) picks."""
    pair = get_answer_pair(answers)
    return pair.positive if probs[0] >= probs[1] else pair.negative
