"""BatchedStepper: concurrent one-token steps stacked into one model step give each caller its own exact result."""

import logging
import threading
import time

import pytest
import torch

from cobra_app.generation.batching import BatchedStepper
from cobra_app.model.mamba import MambaConfig, MambaLM
from tests.model.test_cuda_graph import graphs_on_cpu  # noqa: F401 - a fixture

CFG = MambaConfig(d_model=32, n_layer=2, vocab_size=97, d_state=8)


@pytest.fixture(scope="module")
def lm():
    return MambaLM(CFG).init_weights(torch.Generator().manual_seed(0)).eval()


class SlowLM:
    """Wraps an LM so each step takes a while: concurrent callers then pile up into batches."""

    def __init__(self, lm, delay=0.02):
        self.lm, self.delay = lm, delay

    def step(self, ids, state):
        time.sleep(self.delay)
        return self.lm.step(ids, state)


def decode_alone(lm, prompt, steps):
    """Greedy decoding with unbatched steps: the reference."""
    with torch.no_grad():
        logits, state = lm(prompt)
        token, out = logits[:, -1].argmax(-1), []
        for _ in range(steps):
            logits, state = lm.step(token, state)
            out.append(logits)
            token = logits.argmax(-1)
    return torch.cat(out), state


def test_concurrent_callers_get_their_own_results(lm):
    stepper = BatchedStepper(SlowLM(lm), max_batch=8)
    prompts = [torch.randint(0, 97, (1, 5 + i), generator=torch.Generator().manual_seed(i)) for i in range(6)]
    results = [None] * len(prompts)

    def run(i):
        with torch.no_grad():
            logits, state = lm(prompts[i])
        token, out = logits[:, -1].argmax(-1), []
        for _ in range(10):
            logits, state = stepper.step(token, state)
            out.append(logits)
            token = logits.argmax(-1)
        results[i] = (torch.cat(out), state)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for prompt, (logits, state) in zip(prompts, results):
        ref_logits, ref_state = decode_alone(lm, prompt, 10)
        assert ((logits - ref_logits).abs().max() / ref_logits.abs().max()).item() <= 1e-5
        assert state.max_abs_diff(ref_state) <= 1e-5 and state.seqlen == ref_state.seqlen
    assert stepper.rows == 60 and stepper.batches < 60  # steps were shared


def test_lone_caller_runs_at_once(lm):
    stepper = BatchedStepper(lm)
    with torch.no_grad():
        _, state = lm(torch.tensor([[1, 2, 3]]))
    logits, new_state = stepper.step(torch.tensor([4]), state)
    ref, ref_state = lm.step(torch.tensor([4]), state)
    assert torch.equal(logits, ref) and new_state.max_abs_diff(ref_state) == 0
    assert (stepper.batches, stepper.rows) == (1, 1)


def test_an_error_reaches_every_caller_and_the_stepper_recovers(lm):
    class Broken:
        def step(self, ids, state):
            time.sleep(0.02)
            raise RuntimeError("model failure")

    stepper = BatchedStepper(Broken())
    with torch.no_grad():
        _, state = lm(torch.tensor([[1, 2]]))
    errors = []

    def run():
        try:
            stepper.step(torch.tensor([3]), state)
        except RuntimeError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == ["model failure"] * 4
    stepper.lm = lm
    assert stepper.step(torch.tensor([3]), state)[0].shape == (1, CFG.padded_vocab_size)


def test_an_error_caused_by_one_conversation_reaches_only_that_conversation(lm):
    """A batched step that fails is retried row by row: the other callers get their exact results."""

    class FailsOnToken:
        def __init__(self, lm, bad_token):
            self.lm, self.bad_token, self.failed_batches = lm, bad_token, 0

        def step(self, ids, state):
            time.sleep(0.2 if ids.tolist() == [5] else 0.01)  # the first caller keeps the stepper busy a while
            if (ids == self.bad_token).any():
                self.failed_batches += len(ids) > 1
                raise RuntimeError("model failure on this input")
            return self.lm.step(ids, state)

    model = FailsOnToken(lm, bad_token=13)
    stepper = BatchedStepper(model, max_batch=8)
    with torch.no_grad():
        _, state = lm(torch.tensor([[1, 2, 3]]))
    outcomes: dict[int, object] = {}

    def run(token):
        try:
            outcomes[token] = stepper.step(torch.tensor([token]), state)
        except RuntimeError as exc:
            outcomes[token] = exc

    first = threading.Thread(target=run, args=(5,))
    first.start()
    time.sleep(0.05)  # 5 is running alone; 13, 7 and 9 pile up into one batch behind it
    others = [threading.Thread(target=run, args=(t,)) for t in (13, 7, 9)]
    for t in others:
        t.start()
    for t in (first, *others):
        t.join()
    assert model.failed_batches == 1  # the failing token shared a batch with 7 and 9
    assert isinstance(outcomes[13], RuntimeError)
    for token in (5, 7, 9):
        logits, new_state = outcomes[token]
        ref, ref_state = lm.step(torch.tensor([token]), state)
        assert torch.allclose(logits, ref, rtol=1e-5, atol=1e-6) and new_state.max_abs_diff(ref_state) <= 1e-5


def test_the_stepper_captures_every_batch_size_at_start_up_under_the_model_lock(caplog):
    """Graph capture must not run while replies are sampling on the GPU from other threads: every batch size the
    stepper can form is captured when it is created, holding the model lock."""
    events = []

    class Lock:
        def __enter__(self):
            events.append("lock")

        def __exit__(self, *exc):
            events.append("unlock")

    class GraphedLM:
        def capture_step_graphs(self, batch_sizes):
            events.append(list(batch_sizes))
            return events[-1]

    with caplog.at_level(logging.INFO, logger="cobra_app.generation.batching"):
        stepper = BatchedStepper(GraphedLM(), max_batch=5, model_lock=Lock())
    assert events == ["lock", [1, 2, 3, 4, 5], "unlock"] and stepper.graph_batch_sizes == [1, 2, 3, 4, 5]
    assert "CUDA graphs captured for batch sizes [1, 2, 3, 4, 5]" in caplog.text


def test_no_capture_while_serving_concurrent_samplers(lm, graphs_on_cpu):
    """MambaLM with (eagerly captured) graphs on the CPU: after start-up, six concurrent replies that sample between
    steps cause no capture, and each equals its unbatched decode."""
    stepper = BatchedStepper(lm, max_batch=4)
    assert stepper.graph_batch_sizes == [1, 2, 3, 4] and len(graphs_on_cpu) == 4
    prompts = [torch.randint(0, 97, (1, 4 + i), generator=torch.Generator().manual_seed(i)) for i in range(6)]
    results = {}

    def run(i):
        g = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            logits, state = lm(prompts[i])
        token, out = logits[:, -1].argmax(-1), []
        for _ in range(8):
            logits, state = stepper.step(token, state)
            torch.multinomial(torch.softmax(logits, -1), 1, generator=g)  # sampling work between steps
            out.append(logits)
            token = logits.argmax(-1)
        results[i] = torch.cat(out)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(graphs_on_cpu) == 4
    for i, prompt in enumerate(prompts):
        ref, _ = decode_alone(lm, prompt, 8)
        assert ((results[i] - ref).abs().max() / ref.abs().max()).item() <= 1e-5
