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
    logits, state = cobra.prefill(torch.tensor([ids]), embeds, None, logits_to_keep=len(ids))
    return logits[0], state


def full_recompute_reply(cobra, image, prompt_ids, params) -> list[int]:
    """The reply a stateless pipeline generates after reading the whole conversation `prompt_ids` from scratch."""
    logits, state = full_recompute(cobra, image, prompt_ids)
    decoder = Decoder(cobra, logits[-1], state, params, cobra.turns.eos_id, history_ids=prompt_ids,
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


def stored_keys(manager, sid) -> list[str]:
    """The content keys of the states a live session stored (its saved text positions)."""
    session = session_of(manager, sid)
    keys = manager.engine.keys(session.image_key, session.read_ids())
    return [keys[p] for p in sorted(session.saved)]


def assert_evicted_first(memory, keys) -> None:
    """The entries under `keys` still in memory are the next to be evicted, before every other entry."""
    order = entry_keys(memory)
    present = [k for k in order if k in set(keys)]
    assert present and order[: len(present)] == present, (present, order)


def drain(reply) -> str:
    return "".join(reply)


class ModelWrapper:
    """A SessionModel that is the given model, for wrappers that observe or steer some of its calls."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)


class RecordingModel(ModelWrapper):
    """Records the logits every decode step produced (the outputs the sessions used) and the length of every
    prefill chunk (patches included)."""

    def __init__(self, model):
        super().__init__(model)
        self.logits, self.chunks = [], []

    def step(self, input_ids, state):
        logits, state = self.model.step(input_ids, state)
        self.logits.append(logits[0].clone())
        return logits, state

    def prefill(self, input_ids, image_embeds=None, state=None, logits_to_keep=1):
        self.chunks.append(input_ids.shape[1] + (0 if image_embeds is None else image_embeds.shape[1]))
        return self.model.prefill(input_ids, image_embeds, state, logits_to_keep)


class ForcedReplies(ModelWrapper):
    """Replies scripted by the test: after `force(ids)`, the next reply's tokens are `ids` (each made the arg-max by a
    large bonus on the logits the decoder sees), while every state is the model's own. `prefill_logits`: the raw
    last-position logits of every prefill, `chunks` its length."""

    BONUS = 1e4

    def __init__(self, model):
        super().__init__(model)
        self.pending, self.script, self.pos = None, None, 0
        self.prefill_logits, self.chunks = [], []

    def force(self, ids):
        self.pending = list(ids)

    def _steer(self, logits):
        if self.script is None or self.pos >= len(self.script):
            return logits
        logits = logits.clone()
        logits[..., self.script[self.pos]] += self.BONUS
        return logits

    def prefill(self, input_ids, image_embeds=None, state=None, logits_to_keep=1):
        logits, state = self.model.prefill(input_ids, image_embeds, state, logits_to_keep)
        self.prefill_logits.append(logits[0, -1].clone())
        self.chunks.append(input_ids.shape[1])
        self.script, self.pending, self.pos = self.pending, None, 0
        return self._steer(logits), state

    def step(self, input_ids, state):
        logits, state = self.model.step(input_ids, state)
        self.pos += 1
        return self._steer(logits), state
