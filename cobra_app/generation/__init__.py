"""Decoding: sampling settings, the decode loop over `step`, UTF-8-safe streaming, stop strings, closed-set scoring."""

from cobra_app.generation.decode import Decoder, DecodeResult, FinishReason, StepLM, TokenEvent, generate_text
from cobra_app.generation.sampling import SamplingParams, build_logits_processor, make_generator, next_token
from cobra_app.generation.scoring import ANSWER_PAIRS, AnswerPair, closed_set_probs, get_answer_pair
from cobra_app.generation.stopping import StopStrings
from cobra_app.generation.streaming import TextStreamer

__all__ = [
    "ANSWER_PAIRS",
    "AnswerPair",
    "DecodeResult",
    "Decoder",
    "FinishReason",
    "SamplingParams",
    "StepLM",
    "StopStrings",
    "TextStreamer",
    "TokenEvent",
    "build_logits_processor",
    "closed_set_probs",
    "generate_text",
    "get_answer_pair",
    "make_generator",
    "next_token",
]
