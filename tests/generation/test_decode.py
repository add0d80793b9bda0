"""The decode loop: determinism, seeded sampling, streaming, cancellation and the state/last_token contract.

Contract tests run on a tiny deterministic fake LM and on the real `MambaLM` (tiny config).
"""

import dataclasses
import threading
import time

import pytest
import torch

from cobra_app.generation import Decoder, SamplingParams, TextStreamer, generate_text
from cobra_app.prompting import TurnTokenizer, get_prompt_builder
from tests.helpers import make_test_tokenizer

NEVER = -1  # an eos_id no token can match, for runs that must not end early
REPLACEMENT = "\ufffd"


class FakeLM:
    """A deterministic recurrent LM with MambaLM's interface; the state is a [B, d] tensor, never modified."""

    def __init__(self, vocab: int, d: int = 16, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.randn(vocab, d, generator=g)
        self.w = torch.randn(d, d, generator=g) / d**0.5
        self.head = torch.randn(d, vocab, generator=g)
        self.bias = torch.zeros(vocab)

    def step(self, input_ids: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.emb[input_ids] if state is None else torch.tanh(state @ self.w + self.emb[input_ids])
        return h @ self.head + self.bias, h

    def forward(self, input_ids: torch.Tensor, state=None) -> tuple[torch.Tensor, torch.Tensor]:
        logits = []
        for t in range(input_ids.shape[1]):
            step_logits, state = self.step(input_ids[:, t], state)
            logits.append(step_logits)
        return torch.stack(logits, 1), state


class ScriptedLM:
    """Greedy decoding emits `script` (then token 0); the state is the number of tokens consumed."""

    def __init__(self, script: list[int], vocab: int):
        self.script, self.vocab = script, vocab

    def logits(self, pos: int) -> torch.Tensor:
        x = torch.zeros(self.vocab)
        x[self.script[pos] if pos < len(self.script) else 0] = 10.0
        return x

    def step(self, input_ids: torch.Tensor, state: int) -> tuple[torch.Tensor, int]:
        return self.logits(state + 1)[None], state + 1


class Recording:
    """Wraps an LM and records the tokens fed to `step` (optionally sleeping in each step)."""

    def __init__(self, lm, delay: float = 0.0):
        self.lm, self.delay, self.fed = lm, delay, []

    def step(self, input_ids, state):
        self.fed.append(int(input_ids[0]))
        time.sleep(self.delay)
        return self.lm.step(input_ids, state)


@pytest.fixture(scope="module")
def tokenizer():
    return make_test_tokenizer()


@pytest.fixture(scope="module")
def prompt(tokenizer) -> list[int]:
    return TurnTokenizer(tokenizer, get_prompt_builder("zephyr")).user_turn_ids("What is in the image?", first=True)


def padded(n: int) -> int:
    return (n + 7) // 8 * 8  # the model's vocabulary is padded past the tokenizer's, as in the release


@pytest.fixture(params=["fake", "mamba"])
def lm(request, tokenizer):
    if request.param == "fake":
        return FakeLM(padded(len(tokenizer)))
    # The REAL MambaLM from cobra_app/model/mamba.py (skipped while that module does not exist).
    mamba = pytest.importorskip("cobra_app.model.mamba")
    config = mamba.MambaConfig(d_model=32, n_layer=2, vocab_size=len(tokenizer))
    return mamba.MambaLM(config).init_weights(torch.Generator().manual_seed(0))


def prefill(lm, ids: list[int]):
    """-> (logits [V] after the last id, state after all ids)."""
    with torch.no_grad():
        logits, state = lm.forward(torch.tensor([ids]))
    return logits[0, -1], state


def decode(lm, prompt, params, eos_id=NEVER, **kwargs) -> Decoder:
    """Run a Decoder to the end; its `lm` records what was fed."""
    first_logits, state = prefill(lm, prompt)
    decoder = Decoder(Recording(lm), first_logits, state, params, eos_id, history_ids=prompt, **kwargs)
    decoder.events = list(decoder)
    return decoder


def assert_same_state(a, b):
    if hasattr(a, "max_abs_diff"):
        assert a.seqlen == b.seqlen
        assert a.max_abs_diff(b) < 1e-4
    else:
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def assert_contract(lm, prompt, decoder):
    """state = after prompt + all emitted tokens but the last; feeding last_token continues the full sequence."""
    r = decoder.result
    assert r.last_token == r.token_ids[-1]
    assert decoder.lm.fed == r.token_ids[:-1]  # no step after the last token
    _, expected = prefill(lm, prompt + r.token_ids[:-1])
    assert_same_state(r.state, expected)
    with torch.no_grad():
        logits, _ = lm.step(torch.tensor([r.last_token]), r.state)
    full_logits, _ = prefill(lm, prompt + r.token_ids)
    torch.testing.assert_close(logits[0], full_logits, atol=1e-4, rtol=1e-4)


# --- contract tests on the fake and the real LM ---------------------------------------------------------------------


def test_greedy_is_deterministic_and_matches_full_forward(lm, prompt):
    params = SamplingParams(max_new_tokens=12)
    a, b = decode(lm, prompt, params), decode(lm, prompt, params)
    assert a.result.token_ids == b.result.token_ids and len(a.result.token_ids) == 12
    assert a.result.finish_reason == "length"
    for i, token in enumerate(a.result.token_ids):
        assert prefill(lm, prompt + a.result.token_ids[:i])[0].argmax().item() == token
    assert_contract(lm, prompt, a)


def test_seeded_sampling_reproduces_and_seeds_differ(lm, prompt):
    def tokens(seed: int) -> list[int]:
        return decode(lm, prompt, SamplingParams(max_new_tokens=16, greedy=False, seed=seed)).result.token_ids

    assert tokens(1) == tokens(1)
    assert len({tuple(tokens(seed)) for seed in range(4)}) > 1


@pytest.mark.parametrize("finish", ["eos", "length", "stopped"])
def test_state_and_last_token_contract(lm, prompt, finish):
    params = SamplingParams(max_new_tokens=10, greedy=False, seed=3)
    reference = decode(lm, prompt, params).result.token_ids
    eos_id, expected = NEVER, {"length": 10, "stopped": 4}.get(finish)
    if finish == "eos":  # make the first token that did not occur before the EOS
        expected = next(k for k in range(2, len(reference)) if reference[k] not in reference[:k]) + 1
        eos_id = reference[expected - 1]
    stop = threading.Event()
    first_logits, state = prefill(lm, prompt)
    decoder = Decoder(Recording(lm), first_logits, state, params, eos_id, stop_event=stop, history_ids=prompt)
    for _ in decoder:
        if finish == "stopped" and len(decoder.lm.fed) == 3:  # stop while handling the 4th token
            stop.set()
    assert decoder.result.finish_reason == finish
    assert decoder.result.token_ids == reference[:expected]
    assert_contract(lm, prompt, decoder)


def test_streamed_text_equals_final_text(lm, prompt, tokenizer):
    params = SamplingParams(max_new_tokens=40, greedy=False, seed=5)
    decoder = decode(lm, prompt, params, streamer=TextStreamer(tokenizer), vocab_size=len(tokenizer))
    streamed = "".join(event.text for event in decoder.events)
    assert streamed == tokenizer.decode(decoder.result.token_ids, skip_special_tokens=True)
    first_logits, state = prefill(lm, prompt)
    assert generate_text(lm, first_logits, state, params, NEVER, tokenizer, history_ids=prompt) == streamed


def test_closing_ids_complete_the_turn(lm, prompt, tokenizer):
    eos = tokenizer.eos_token_id
    decoder = decode(lm, prompt, SamplingParams(max_new_tokens=5), vocab_size=len(tokenizer))
    r = decoder.result
    closing = r.closing_ids(eos)
    assert closing == [r.last_token, eos]
    with torch.no_grad():
        _, state = lm.forward(torch.tensor([closing]), state=r.state)
    assert_same_state(state, prefill(lm, prompt + r.token_ids + [eos])[1])


# --- loop behaviour (fake LM) ----------------------------------------------------------------------------------------


@pytest.fixture
def fake(tokenizer):
    return FakeLM(padded(len(tokenizer)))


def test_eos_is_emitted_and_closes_with_itself(fake, prompt):
    reference = decode(fake, prompt, SamplingParams(max_new_tokens=8)).result.token_ids
    r = decode(fake, prompt, SamplingParams(max_new_tokens=8), eos_id=reference[0]).result
    assert (r.token_ids, r.finish_reason, r.last_token) == ([reference[0]], "eos", reference[0])
    assert r.closing_ids(reference[0]) == [reference[0]]


def test_one_token_takes_no_step(fake, prompt):
    decoder = decode(fake, prompt, SamplingParams(max_new_tokens=1))
    _, state = prefill(fake, prompt)
    assert len(decoder.result.token_ids) == 1 and decoder.lm.fed == []
    torch.testing.assert_close(decoder.result.state, state)


def test_stop_before_start_emits_nothing(fake, prompt):
    stop = threading.Event()
    stop.set()
    first_logits, state = prefill(fake, prompt)
    decoder = Decoder(fake, first_logits, state, SamplingParams(), eos_id=0, stop_event=stop)
    assert list(decoder) == []
    r = decoder.result
    assert (r.token_ids, r.finish_reason, r.last_token, r.state) == ([], "stopped", None, state)
    assert r.closing_ids(0) == [0]


def test_stop_from_another_thread(fake, prompt):
    stop = threading.Event()
    first_logits, state = prefill(fake, prompt)
    recording, params = Recording(fake, delay=0.002), SamplingParams(max_new_tokens=10_000)
    decoder = Decoder(recording, first_logits, state, params, NEVER, stop_event=stop)
    worker = threading.Thread(target=lambda: list(decoder))
    worker.start()
    time.sleep(0.05)
    stop.set()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert decoder.result.finish_reason == "stopped" and 1 <= len(decoder.result.token_ids) < 10_000
    assert_contract(fake, prompt, decoder)


def test_abandoned_iteration_counts_as_a_stop(fake, prompt):
    first_logits, state = prefill(fake, prompt)
    decoder = Decoder(Recording(fake), first_logits, state, SamplingParams(max_new_tokens=50), NEVER)
    events = iter(decoder)
    next(events), next(events)
    assert decoder.result is None
    events.close()
    assert decoder.result.finish_reason == "stopped" and len(decoder.result.token_ids) == 2
    assert_contract(fake, prompt, decoder)


def test_vocab_size_excludes_padding_rows(fake, prompt, tokenizer):
    fake.bias[len(tokenizer) :] = 1e3  # padding rows that would win
    params = SamplingParams(max_new_tokens=6, greedy=False, seed=0)
    assert all(t >= len(tokenizer) for t in decode(fake, prompt, params).result.token_ids)
    assert all(t < len(tokenizer) for t in decode(fake, prompt, params, vocab_size=len(tokenizer)).result.token_ids)


def test_repetition_penalty_sees_the_prompt(fake, prompt):
    first = decode(fake, prompt, SamplingParams(max_new_tokens=1)).result.token_ids[0]
    penalised = SamplingParams(max_new_tokens=1, repetition_penalty=1e3)
    assert decode(fake, [*prompt, first], penalised).result.token_ids[0] != first  # history includes the prompt
    tokens = decode(fake, prompt, SamplingParams(max_new_tokens=20, repetition_penalty=1e3)).result.token_ids
    assert len(set(tokens)) > len(set(decode(fake, prompt, SamplingParams(max_new_tokens=20)).result.token_ids))


def test_first_logits_must_be_one_position(fake, prompt):
    first_logits, state = prefill(fake, prompt)
    with pytest.raises(ValueError, match=r"\[vocab\]"):
        Decoder(fake, first_logits[None], state, SamplingParams(), 0)


# --- streaming through the loop (scripted LM) ------------------------------------------------------------------------


def scripted(tokenizer, text: str) -> tuple[ScriptedLM, list[int]]:
    script = tokenizer.encode(text)
    return ScriptedLM(script, len(tokenizer)), script


def run_scripted(lm: ScriptedLM, tokenizer, params, stop_after: int | None = None) -> Decoder:
    stop = threading.Event()
    streamer = TextStreamer(tokenizer)
    decoder = Decoder(lm, lm.logits(0), 0, params, tokenizer.eos_token_id, stop_event=stop, streamer=streamer)
    decoder.events = []
    for event in decoder:
        decoder.events.append(event)
        if len(decoder.events) == stop_after:
            stop.set()
    return decoder


def test_one_event_per_token_and_eos_has_no_text(tokenizer):
    lm, script = scripted(tokenizer, "A cat 😀 on a sofa.")
    decoder = run_scripted(lm, tokenizer, SamplingParams(max_new_tokens=100))
    assert [e.token_id for e in decoder.events] == script + [tokenizer.eos_token_id]
    assert decoder.events[-1].text == "" and decoder.result.finish_reason == "eos"
    assert "".join(e.text for e in decoder.events) == "A cat 😀 on a sofa."
    assert not any(e.text.endswith(REPLACEMENT) for e in decoder.events)


@pytest.mark.parametrize("how", ["length", "stopped"])
def test_cut_inside_a_character_flushes_a_final_event(tokenizer, how):
    lm, script = scripted(tokenizer, "ok 😀 x")
    cut = next(k for k in range(len(script)) if tokenizer.decode(script[: k + 1]).endswith(REPLACEMENT)) + 1
    params = SamplingParams(max_new_tokens=cut if how == "length" else 100)
    decoder = run_scripted(lm, tokenizer, params, stop_after=cut if how == "stopped" else None)
    assert decoder.result.finish_reason == how and decoder.result.token_ids == script[:cut]
    assert [e.token_id for e in decoder.events] == script[:cut] + [None]
    assert decoder.events[-1].text.endswith(REPLACEMENT)
    assert "".join(e.text for e in decoder.events) == tokenizer.decode(script[:cut], skip_special_tokens=True)


# --- stop strings and log-probabilities ------------------------------------------------------------------------------


def test_a_stop_string_ends_the_reply_just_before_it(lm, prompt, tokenizer):
    """The text ends before the stop string; the ids run to the token that completed it; the state contract holds."""
    params = SamplingParams(max_new_tokens=40, greedy=False, seed=5)
    reference = decode(lm, prompt, params, streamer=TextStreamer(tokenizer), vocab_size=len(tokenizer)).result
    full = tokenizer.decode(reference.token_ids, skip_special_tokens=True)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    completed = next(k for k in range(1, len(reference.token_ids) + 1)
                     if stop in tokenizer.decode(reference.token_ids[:k], skip_special_tokens=True))
    with_stop = dataclasses.replace(params, stop=("never there", stop))
    decoder = decode(lm, prompt, with_stop, streamer=TextStreamer(tokenizer), vocab_size=len(tokenizer))
    assert "".join(e.text for e in decoder.events) == full[: full.index(stop)]
    assert decoder.result.finish_reason == "stop_string"
    assert decoder.result.token_ids == reference.token_ids[:completed]
    assert_contract(lm, prompt, decoder)


def test_stop_strings_need_a_streamer(fake, prompt):
    first_logits, state = prefill(fake, prompt)
    with pytest.raises(ValueError, match="streamer"):
        Decoder(fake, first_logits, state, SamplingParams(stop=("\n",)), NEVER)


@pytest.mark.parametrize("params", [SamplingParams(max_new_tokens=12),
                                    SamplingParams(max_new_tokens=12, greedy=False, temperature=0.3, top_p=0.8,
                                                   repetition_penalty=1.5, seed=2)])
def test_log_probabilities_are_the_raw_model_distribution(lm, prompt, tokenizer, params):
    """Each token's logprob and top-k equal log-softmax of a full recompute's logits over the tokenizer's vocabulary,
    whatever the sampling settings (they change which token is picked, not the reported distribution)."""
    vocab = len(tokenizer)
    decoder = decode(lm, prompt, params, vocab_size=vocab, logprobs=5)
    tokens = decoder.result.token_ids
    for i, event in enumerate(decoder.events):
        expected = torch.log_softmax(prefill(lm, prompt + tokens[:i])[0][:vocab].float(), dim=-1)
        assert event.logprob == pytest.approx(expected[event.token_id].item(), abs=1e-4)
        best = torch.topk(expected, 5)
        assert [t for t, _ in event.top_logprobs] == best.indices.tolist()
        assert [lp for _, lp in event.top_logprobs] == pytest.approx(best.values.tolist(), abs=1e-4)
    assert all(e.logprob is None and e.top_logprobs == () for e in decode(lm, prompt, params).events)


def test_zero_logprobs_gives_the_token_logprob_only(fake, prompt):
    events = decode(fake, prompt, SamplingParams(max_new_tokens=3), logprobs=0).events
    assert all(e.logprob is not None and e.logprob <= 0 and e.top_logprobs == () for e in events)
