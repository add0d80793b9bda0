"""The API benchmark: its checks fail when they should (a server that re-reads the history, replies that differ from
the live session, a time to first token that grows) and, on the state store, it runs end to end."""

import argparse
import io

import openai
import pytest

from cobra_app.api.reference import ReferenceBackend
from cobra_app.api.serve import api_mount, serving_in_thread
from cobra_app.bench.api import Recording, Turn, api_conversation, report, run
from cobra_app.bench.turns import synthetic_image
from cobra_app.serving.config import AppConfig
from cobra_app.sessions import SessionManager
from tests.helpers import make_tiny_cobra, one_torch_thread  # noqa: F401 - a fixture

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cobra():
    return make_tiny_cobra()


def turns(ttfts, computed=(10, 5, 5), new=(10, 5, 5), contents=("a", "b", "c"), reread=(0, 0, 0)) -> list[Turn]:
    """Three turns: prompts of 10, 20 and 30 tokens, of which 0, 15 and 25 cached."""
    return [Turn(c, p, h, 1, t, t, k, n, r) for c, t, k, n, p, h, r in zip(contents, ttfts, computed, new, (10, 20, 30),
                                                                             (0, 15, 25), reread)]


def verdicts(runs, live) -> list[str]:
    out = io.StringIO()
    report(runs, live, out)
    return [line for line in out.getvalue().splitlines() if line.startswith(("PASS", "FAIL", "store hit rate"))]


def test_the_checks_pass_and_fail_as_they_should():
    good = [turns([0.5, 0.10, 0.12]), turns([0.4, 0.12, 0.13])]  # medians: turn 2 0.11, turn 3 0.125
    live = [["a", "b", "c"]] * 2
    assert [v[:4] for v in verdicts(good, live)] == ["PASS", "PASS", "PASS", "PASS", "stor"]
    assert "turn 3 / turn 2 = 1.136" in verdicts(good, live)[2]
    assert verdicts(good, live)[4] == ("store hit rate: 4/6 requests resumed from a stored state (0.667); 80/120 "
                                       "prompt tokens taken from the store (0.667)")
    recomputing = [turns([0.5, 0.1, 0.1], computed=(10, 8, 8)), turns([0.5, 0.1, 0.1])]  # 8 > 5 + 2
    assert [v[:4] for v in verdicts(recomputing, live)[:2]] == ["FAIL", "FAIL"]
    rereading = [turns([0.5, 0.1, 0.1], computed=(10, 8, 8), reread=(0, 1, 1)), turns([0.5, 0.1, 0.1])]
    assert [v[:4] for v in verdicts(rereading, live)[:2]] == ["FAIL", "PASS"]  # 8 <= 5 + 2 + 1: the re-read only
    assert "(2 of 6 requests)" in verdicts(rereading, live)[1]
    slower = [turns([0.5, 0.1, 0.2])] * 2
    assert verdicts(slower, live)[2].startswith("FAIL: time to first token")
    differing = [turns([0.5, 0.1, 0.1], contents=("a", "b", "x"))] * 2
    assert verdicts(differing, live)[3].startswith("FAIL: replies identical")


def test_a_server_that_recomputes_the_history_fails_the_token_check(cobra):
    backend = Recording(ReferenceBackend(cobra))
    with serving_in_thread(api_mount(AppConfig(max_new_tokens=4), cobra, backend)) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        conversation = api_conversation(client, "tiny-cobra", backend, cobra, synthetic_image(seed=1), 3, 4)
    assert len(conversation) == 3 and all(t.ttft_s > 0 and t.cached_tokens == 0 for t in conversation)
    assert conversation[0].computed_tokens <= conversation[0].new_tokens + 2  # turn 1: everything is new
    assert all(t.computed_tokens > t.new_tokens + 2 + t.reread_tokens for t in conversation[1:])  # then all history
    assert conversation[2].prompt_tokens > conversation[1].prompt_tokens > conversation[0].prompt_tokens


@pytest.mark.skipif(not hasattr(SessionManager, "complete"), reason="SessionManager.complete (issue 19, the state "
                    "store) has not landed yet")
def test_on_the_store_the_benchmark_runs_end_to_end(cobra):
    out = io.StringIO()
    args = argparse.Namespace(turns=4, repeats=2, max_tokens=4, memory_budget=50 * 10**6)
    run(cobra, args, out)  # its verdict: the strict token check and the timing may fail on a tiny random model
    text = out.getvalue()
    assert "PASS: tokens computed <= new tokens + 2 + the previous reply re-read" in text, text
    assert "PASS: replies identical" in text, text
    assert "store hit rate: 6/8 requests resumed from a stored state" in text, text  # all but each first turn
