"""The bounded load script: answer checks, percentiles, the memory bound, and a short run against the launched app."""

import json

import pytest

from cobra_app.bench import load
from cobra_app.loading import save_model_dir
from tests.helpers import make_tiny_vlm


def chat(*pairs, speed=True):
    messages = []
    for question, reply in pairs:
        messages.append({"role": "user", "content": [{"type": "text", "text": question}]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": reply}]})
        if speed:
            messages.append({"role": "assistant", "content": "", "metadata": {"title": "0.1 s to first token"}})
    return messages


def test_the_reply_is_read_only_once_it_answers_this_question():
    old = chat(("Is there a red circle?", "Yes"))
    assert load.reply_to(old, "How many objects are there?") == ""  # the previous reply does not count
    streaming = old + chat(("How many objects are there?", "Tw"), speed=False)
    assert load.reply_to(streaming, "How many objects are there?") == "Tw"


@pytest.mark.parametrize(("reply", "answer", "correct"), [
    ("Yes", "Yes", True), ("yes, there is.", "Yes", True), ("No", "Yes", False), ("", "No", False),
    ("True", "True", True), ("Two.", "Two.", True), ("two", "Two.", True), ("Three.", "Two.", False),
    ("A red circle.", "A red circle.", True), ("A red square.", "A red circle.", False),
])
def test_answers_are_checked_like_the_demo_evaluation(reply, answer, correct):
    assert load.is_correct(reply, answer) is correct


def test_summary_counts_failures_wrong_answers_and_the_memory_bound():
    report = load.LoadReport(users=2, seconds=10.0, rss_before_bytes=1000 * 10**6, budget_bytes=500 * 10**6)
    report.requests = [load.Request(0, 0.0, 1.0, 0.2, True, True), load.Request(1, 0.5, 3.0, 0.4, True, False),
                       load.Request(0, 1.0, 9.0, None, False, None, "boom")]
    report.memory = [(0.0, 1000 * 10**6), (1.0, 1400 * 10**6), (2.0, 1200 * 10**6)]
    s = report.summary()
    assert (s["requests"], s["failed"], s["wrong_answers"], s["accuracy"]) == (3, 1, 1, 0.5)
    assert s["latency_s"]["max"] == 3.0 and s["requests_per_s"] == 0.2  # failed requests are not throughput
    assert s["within_bound"] and (s["rss_peak_mb"], s["rss_end_mb"], s["bound_mb"]) == (1400, 1200, 1500)
    report.memory.append((3.0, 1501 * 10**6))
    assert not report.summary()["within_bound"]


def test_summary_compares_each_reply_under_load_with_the_same_conversation_replayed_alone():
    report = load.LoadReport(users=2, seconds=10.0)
    asked = dict(ok=True, question="How many objects are there?", answer="Two.")
    report.requests = [
        load.Request(0, 0.0, 1.0, 0.2, correct=True, reply="Two.", alone="Two.", **asked),
        load.Request(1, 0.5, 1.0, 0.2, correct=False, reply="Three.", alone="Three.", **asked),  # the model's error
        load.Request(1, 1.0, 1.0, 0.2, correct=True, reply="Two.", alone=None, **asked),  # not replayed
    ]
    s = report.summary()
    assert (s["replayed"], s["differ_from_alone"], s["wrong_alone"]) == (2, 0, 1)
    report.requests[0].alone = "Three."  # the load changed a reply: another user's state leaked in, say
    assert report.summary()["differ_from_alone"] == 1


class FailingClient:
    """A client whose app answers nothing: every call raises, as a timed-out or refused request does."""

    def __init__(self):
        self.calls = 0

    def predict(self, *args, **kwargs):
        self.calls += 1
        raise TimeoutError("read timed out")

    submit = predict


def test_every_failed_call_of_a_user_is_counted_and_the_user_goes_on(tmp_path):
    scene = load.sample_scene(load.np.random.default_rng(0))
    image = tmp_path / "scene.png"
    load.render(scene, 32).save(image)
    report, client = load.LoadReport(users=1, seconds=0.3), FailingClient()
    t0 = load.time.monotonic()
    user = load.User(0, client, scene, image, report, t0, t0 + 0.3, turns_per_chat=2, seed=0)
    user.run()
    assert len(report.requests) == client.calls >= 3  # the /clear of every second turn fails too, and is counted
    assert all(not r.ok and r.correct is None and "TimeoutError" in r.error for r in report.requests)
    assert report.summary()["failed"] == len(report.requests)


def test_connecting_is_retried_then_the_failure_is_raised(monkeypatch):
    import gradio_client

    attempts = []

    def busy_then_ready(url, verbose=True, httpx_kwargs=None):
        attempts.append(httpx_kwargs)
        if len(attempts) < 3:
            raise TimeoutError("read timed out")
        return "client"

    monkeypatch.setattr(gradio_client, "Client", busy_then_ready)
    assert load.connect("http://127.0.0.1:1/", attempts=3, wait_s=0.0) == "client" and len(attempts) == 3
    assert attempts == [{"timeout": 30.0}] * 3  # a busy app's config may take longer than httpx's default 5 s
    attempts.clear()
    with pytest.raises(TimeoutError):
        load.connect("http://127.0.0.1:1/", attempts=2, wait_s=0.0)
    assert len(attempts) == 2


@pytest.mark.slow
def test_a_short_run_against_the_launched_app(tmp_path):
    vlm, tokenizer = make_tiny_vlm()
    model = save_model_dir(vlm, tokenizer, tmp_path / "model")
    out, doc = tmp_path / "out", tmp_path / "LOAD.md"
    code = load.main(["--users", "2", "--minutes", "0.1", "--model", str(model), "--memory-budget", "20MB",
                      "--turns-per-chat", "2", "--out", str(out), "--doc", str(doc)])
    result = json.loads((out / "load.json").read_text())
    summary = result["summary"]
    assert summary["requests"] >= 4 and summary["failed"] == 0 and code == 0  # random weights: answers unchecked
    assert summary["replayed"] == summary["requests"] and summary["differ_from_alone"] == 0  # but equal alone
    assert {r["user"] for r in result["requests"]} == {0, 1} and len(result["memory"]) >= 5
    assert summary["within_bound"] and summary["rss_before_mb"] > 0
    assert load.BEGIN in doc.read_text() and "| users |" in doc.read_text()
