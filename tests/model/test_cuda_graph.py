"""GraphedStep's buffer logic, checked on the CPU with `capture_eagerly` (the CUDA capture itself is checked on a GPU by
`python -m cobra_app.bench.cuda_check`, and by the last test here where CUDA is available)."""

from contextlib import nullcontext

import pytest
import torch

from cobra_app.model import mamba
from cobra_app.model.cuda_graph import WARMUP_CALLS, GraphedStep, capture_cuda_graph, capture_eagerly
from cobra_app.model.mamba import MambaLM
from tests.model.test_mamba import TINY, tiny_lm


def decode(step, lm, ids: torch.Tensor, prompt_len: int) -> tuple[list[torch.Tensor], list]:
    """Prefill ids[:, :prompt_len], then step through the rest: (logits per step, state per step)."""
    with torch.no_grad():
        _, state = lm(ids[:, :prompt_len])
        logits_seen, states_seen = [], []
        for t in range(prompt_len, ids.shape[1]):
            logits, state = step(ids[:, t], state)
            logits_seen.append(logits)
            states_seen.append(state)
    return logits_seen, states_seen


def counting_eager_capture():
    """(a list that gets one entry per capture, `capture_eagerly` counting into it)."""
    captures = []

    def counting_capture(fn):
        captures.append(1)
        return capture_eagerly(fn)

    return captures, counting_capture


@pytest.mark.parametrize("batch", [1, 3])
def test_graphed_steps_equal_eager_steps_and_return_values_the_caller_owns(batch):
    lm = tiny_lm()
    ids = torch.randint(0, TINY.vocab_size, (batch, 14), generator=torch.Generator().manual_seed(batch))
    graphed = GraphedStep(lm.eager_step, capture=capture_eagerly)
    logits, states = decode(graphed, lm, ids, prompt_len=8)
    ref_logits, ref_states = decode(lm.eager_step, lm, ids, prompt_len=8)
    # every step's outputs are still intact after later replays (cloned out of the static buffers, never aliased)
    for got, ref in zip(logits, ref_logits, strict=True):
        assert torch.equal(got, ref)
    for got, ref in zip(states, ref_states, strict=True):
        assert got.seqlen == ref.seqlen and got.max_abs_diff(ref) == 0
    assert graphed.batch_sizes == [batch]


def test_one_capture_per_batch_size_and_the_input_state_is_not_modified():
    lm = tiny_lm()
    captures, counting_capture = counting_eager_capture()
    graphed = GraphedStep(lm.eager_step, capture=counting_capture)
    with torch.no_grad():
        _, pair = lm(torch.randint(0, TINY.vocab_size, (2, 5), generator=torch.Generator().manual_seed(0)))
        _, single = lm(torch.tensor([[3]]))
        before = pair.clone()
        for _ in range(3):
            graphed(torch.tensor([1, 2]), pair)
        graphed(torch.tensor([4]), single)
    assert pair.max_abs_diff(before) == 0
    assert len(captures) == 2 and graphed.batch_sizes == [1, 2]


def test_cpu_steps_do_not_use_graphs():
    lm = tiny_lm()
    with torch.no_grad():
        _, state = lm(torch.tensor([[1, 2, 3]]))
        lm.step(torch.tensor([4]), state)
    assert not hasattr(lm, "_graphs")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_steps_equal_eager_steps_on_cuda():
    lm = tiny_lm().cuda()
    ids = torch.randint(0, TINY.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1)).cuda()
    logits, _ = decode(lm.step, lm, ids, prompt_len=6)
    ref_logits, _ = decode(lm.eager_step, lm, ids, prompt_len=6)
    assert hasattr(lm, "_graphs")
    for got, ref in zip(logits, ref_logits, strict=True):
        assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_prepare_captures_a_batch_size_once_and_calls_then_only_replay():
    lm = tiny_lm()
    captures, counting_capture = counting_eager_capture()
    graphed = GraphedStep(lm.eager_step, capture=counting_capture)
    with torch.no_grad():
        for batch in (1, 2, 2):
            graphed.prepare(torch.zeros(batch, dtype=torch.long), lm.initial_state(batch))
        _, state = lm(torch.tensor([[5, 6], [7, 8]]))
        logits, _ = graphed(torch.tensor([1, 2]), state)
        ref, _ = lm.eager_step(torch.tensor([1, 2]), state)
    assert len(captures) == 2 and graphed.batch_sizes == [1, 2] and torch.equal(logits, ref)


@pytest.fixture
def graphs_on_cpu(monkeypatch):
    """MambaLM's graphed step on the CPU, captured eagerly: the captures made are counted in the returned list."""
    captures, counting_capture = counting_eager_capture()
    monkeypatch.setattr(MambaLM, "_graphs_enabled", staticmethod(lambda device: True))
    monkeypatch.setattr(mamba, "GraphedStep", lambda step_fn: GraphedStep(step_fn, capture=counting_capture))
    return captures


def test_capture_step_graphs_captures_each_batch_size_then_steps_only_replay(graphs_on_cpu):
    lm = tiny_lm()
    assert lm.capture_step_graphs(range(1, 5)) == [1, 2, 3, 4] and len(graphs_on_cpu) == 4
    ids = torch.randint(0, TINY.vocab_size, (3, 10), generator=torch.Generator().manual_seed(3))
    logits, _ = decode(lm.step, lm, ids, prompt_len=6)
    ref_logits, _ = decode(lm.eager_step, lm, ids, prompt_len=6)
    assert len(graphs_on_cpu) == 4 and all(torch.equal(a, b) for a, b in zip(logits, ref_logits, strict=True))


def test_no_graphs_to_capture_on_cpu_or_when_turned_off(monkeypatch):
    lm = tiny_lm()
    assert lm.capture_step_graphs(range(1, 9)) == [] and not hasattr(lm, "_graphs")
    monkeypatch.setenv("COBRA_CUDA_GRAPHS", "0")
    assert not MambaLM._graphs_enabled(torch.device("cuda"))


def test_cuda_capture_runs_in_thread_local_mode(monkeypatch):
    """"global" capture fails on any other thread's CUDA allocation, as replies sampling outside the model lock make;
    the capture is recorded with "thread_local" (checked here on stand-ins of torch.cuda's stream and graph API)."""
    recorded = {}

    class FakeGraph:
        replay = "replay"

        def __init__(self, *args, **kwargs):
            pass

    class FakeCapture:
        def __init__(self, graph, **kwargs):
            recorded.update(kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    class FakeStream:
        def wait_stream(self, other):
            pass

    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", FakeCapture)
    calls = []
    outputs, replay = capture_cuda_graph(lambda: calls.append(1) or ("logits", "state"))
    assert recorded == {"capture_error_mode": "thread_local"}
    assert outputs == ("logits", "state") and replay == "replay" and len(calls) == WARMUP_CALLS + 1
