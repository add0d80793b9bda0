"""Helpers for the session tests: full-recompute references, comparisons, a logits recorder."""

import torch

from cobra_app.generation import Decoder, SamplingParams
from cobra_app.sessions import measure_nbytes

MESSAGES = (
    "What is in the image?",
    "Is there a dog? Answer yes or no.",
    "Is the cup left of the plate?",
    "Describe the picture.",
    "The ball is under the lamp. True or False?",
    "Numbers: 1, 2, 3 and 42 - what comes next?",
)


def sampled(seed: int, max_new_tokens: int = 8) -> SamplingParams:
    return SamplingParams(greedy=False, temperature=1.0, top_p=0.95, seed=seed, max_new_tokens=max_new_tokens)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to max |b|."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


def state_rel_diff(a, b) -> float:
    """Largest relative difference over every layer's conv and ssm state."""
    return max(
        max(rel_diff(x.conv, y.conv), rel_diff(x.ssm, y.ssm)) for x, y in zip(a.layers, b.layers)
    )


@torch.no_grad()
def full_recompute(cobra, image, ids):
    """Read [image patches] + ids from scratch: (logits [len(ids), V] where row i predicts ids[i + 1], final state)."""
    embeds = None if image is None else cobra.encode_image(image)
    logits, state = cobra.vlm.prefill(torch.tensor([ids]), embeds, None, logits_to_keep=len(ids))
    return logits[0], state


def full_recompute_reply(cobra, image, prompt_ids, params) -> list[int]:
    """The reply a stateless pipeline generates after reading the whole conversation `prompt_ids` from scratch."""
    logits, state = full_recompute(cobra, image, prompt_ids)
    decoder = Decoder(cobra.vlm.llm, logits[-1], state, params, cobra.turns.eos_id, history_ids=prompt_ids,
                      vocab_size=cobra.vocab_size)
    for _ in decoder:
        pass
    return decoder.result.token_ids


def session_of(manager, sid):
    """The manager's live session record (inspection)."""
    return manager.registry.peek(sid)


def entry_keys(memory) -> list:
    """A MemoryStore's keys, least recently used first."""
    with memory._lock:
        return list(memory._entries)


def measured_bytes(memory) -> int:
    """Re-measure every value a MemoryStore holds from its tensors (a check on its running total)."""
    with memory._lock:
        values = [v for v, _ in memory._entries.values()]
    return measure_nbytes(values)


def drain(reply) -> str:
    return "".join(reply)


class RecordingLM:
    """Wraps the model's `step` to record the logits every decode step produced (the outputs the sessions used)."""

    def __init__(self, lm):
        self.lm, self.logits = lm, []

    def step(self, input_ids, state):
        logits, state = self.lm.step(input_ids, state)
        self.logits.append(logits[0].clone())
        return logits, state
