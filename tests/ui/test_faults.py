"""Faults (issue 8): a model error in one session, a client gone mid-stream, Stop pressed again and again, a session's
state evicted while it replies. The other sessions carry on unchanged, the failed one can continue or is told why, and
memory returns to its baseline."""

import gc
import threading
import time

import pytest

from cobra_app.model.mamba import MambaState
from cobra_app.sessions import SessionManager
from cobra_app.ui.handlers import ChatHandlers
from cobra_app.ui.params import ParamValues
from tests.helpers import sample_image
from tests.sessions.support import (
    entry_keys,
    full_recompute,
    measured_bytes,
    session_of,
    state_rel_diff,
    stored_keys,
)
from tests.ui.support import RecordingNotifier, last

GREEDY = ParamValues(max_new_tokens=12)
USERS = ("A", "B", "C")


@pytest.fixture
def images(tmp_path):
    paths = {}
    for seed, name in enumerate(USERS):
        paths[name] = str(tmp_path / f"{name}.png")
        sample_image(48, 40, seed=seed).save(paths[name])
    return paths


def handlers(cobra, **manager_kwargs) -> ChatHandlers:
    """Every token an update (`stream_every_s=0`): these tests step into the middle of a reply update by update."""
    return ChatHandlers(SessionManager(cobra, memory_budget_bytes=50 * 10**6, **manager_kwargs),
                        notifier=RecordingNotifier(), stream_every_s=0)


def live_states() -> int:
    gc.collect()
    return sum(type(o) is MambaState for o in gc.get_objects())


def loose_states(manager) -> int:
    """States alive outside the manager's store (the store keeps states by content until its budget needs room)."""
    return live_states() - sum(isinstance(k, str) for k in entry_keys(manager.store.memory))


FIRST = {"A": "What is in the image? " + "Describe every object. " * 10,  # A's prompt is the longest
         "B": "What is in the image?", "C": "What is in the image?"}
SECOND = "And the colours?"


def transcript(chat) -> list[tuple[str, str]]:
    """The messages without the speed lines (their timings differ from run to run)."""
    return [(m["role"], str(m["content"])) for m in chat if not m.get("metadata")]


def converse(ui: ChatHandlers, sids: dict, images: dict, messages: dict, results: dict) -> None:
    """Every user sends their message about their own image at the same time; results[user] = (chat, textbox)."""

    def run(user):
        _, chat, box = last(ui.send(images[user], messages[user], sids[user], GREEDY))
        results[user] = (transcript(chat), box)

    threads = [threading.Thread(target=run, args=(u,)) for u in sids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.fixture
def slow_steps(monkeypatch, tiny_cobra):
    """Each decode step takes 3 ms, so that concurrent replies overlap (and their steps are batched)."""
    llm = tiny_cobra.vlm.llm
    real_step = type(llm).step

    def slow_step(self, *args, **kwargs):
        time.sleep(0.003)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(type(llm), "step", slow_step)


def run_two_rounds(ui: ChatHandlers, images: dict, between=None) -> tuple[dict, dict]:
    sids = {u: ui.open_tab() for u in USERS}
    results: dict = {}
    converse(ui, sids, images, FIRST, results)
    if between:
        between(sids)
    converse(ui, sids, images, dict.fromkeys(USERS, SECOND), results)
    return sids, results


@pytest.mark.parametrize("where", ["prefill", "decode"])
def test_a_model_error_in_one_session_leaves_the_others_unchanged(tiny_cobra, images, slow_steps, monkeypatch, caplog,
                                                                 where):
    _, expected = run_two_rounds(handlers(tiny_cobra), images)  # no fault anywhere
    ui = handlers(tiny_cobra)
    llm = tiny_cobra.vlm.llm
    real_forward = type(llm).forward
    failures = {"n": 0}
    image_bytes = {}

    def fail_a_from_now_on(sids):
        """The model fails on A's conversation only: on states at least as long as A's (nobody else's gets there)."""
        patches = tiny_cobra.vlm.config.vision.num_patches
        lengths = {u: patches + len(ui.manager.token_ids(sid)) for u, sid in sids.items()}
        second = len(ui.manager.cobra.turns.user_turn_ids(SECOND, first=False))
        lengths["A"] = patches + len(session_of(ui.manager, sids["A"]).exchanges[0].user_ids)  # A's first prompt
        assert lengths["A"] > max(lengths["B"], lengths["C"]) + second + GREEDY.max_new_tokens
        image_bytes["n"] = ui.manager.stats()["bytes_in_use"]

        def forward(self, input_ids=None, **kwargs):
            chunk = (input_ids if input_ids is not None else kwargs["inputs_embeds"]).shape[1]
            seqlen = kwargs["state"].seqlen if kwargs.get("state") is not None else 0
            # seqlen -1: a batch of decode steps of several conversations; it fails, each row is retried alone
            if (chunk > 1) == (where == "prefill") and (seqlen >= lengths["A"] or seqlen == -1):
                failures["n"] += 1
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return real_forward(self, input_ids, **kwargs)

        monkeypatch.setattr(type(llm), "forward", forward)

    baseline_states = loose_states(ui.manager)
    sids, results = run_two_rounds(ui, images, between=fail_a_from_now_on)
    assert failures["n"] >= 1
    for user in ("B", "C"):  # untouched: the very replies of a run without faults
        assert results[user] == expected[user]
    _, box_a = results["A"]
    assert box_a == SECOND  # the message is given back to send again
    assert any(w.startswith("Cobra failed") and "model error" in w for w in ui.notify.warnings)
    assert all("CUDA" not in w and "Traceback" not in w for w in ui.notify.warnings)

    monkeypatch.setattr(type(llm), "forward", real_forward)
    if where == "decode":  # the failed reply was kept (as far as it got): regenerate it
        _, chat_a = last(ui.regenerate(sids["A"], GREEDY))
    else:  # nothing was added: send the message again
        _, chat_a, _ = last(ui.send(images["A"], SECOND, sids["A"], GREEDY))
    assert (transcript(chat_a), "") == expected["A"]

    for sid in sids.values():
        ui.close(sid)
    stats = ui.manager.stats()
    assert stats["sessions"] == stats["replies_in_flight"] == 0
    assert stats["bytes_in_use"] == measured_bytes(ui.manager.store.memory) <= stats["budget_bytes"]
    assert any(r.exc_info for r in caplog.records)  # the operator's log has the traceback; the user does not
    for record in caplog.records:  # (pytest keeps log records, whose tracebacks reference the failed call's states)
        record.exc_info = None
    assert loose_states(ui.manager) <= baseline_states  # nothing of the failed calls stays alive


def test_a_client_gone_mid_stream_loses_nothing_and_frees_its_reply(tiny_cobra, images, slow_steps):
    ui = handlers(tiny_cobra)
    sid, other = ui.open_tab(), ui.open_tab()
    last(ui.send(images["B"], "Hello?", other, GREEDY))
    baseline_states = loose_states(ui.manager)
    stream = ui.send(images["A"], "Tell me a long story.", sid, ParamValues(max_new_tokens=200))
    for _ in range(5):
        next(stream)
    del stream  # the connection dropped: Gradio stops iterating and drops the generator
    gc.collect()
    assert ui.manager.stats()["replies_in_flight"] == 0  # the reply was ended and saved
    (question, partial), = ui.manager.history(sid)
    assert question == "Tell me a long story." and partial
    _, chat, box = last(ui.send(images["A"], "Go on.", sid, GREEDY))  # the same tab carries on
    assert box == "" and [m["content"] for m in chat if m["role"] == "user"] == ["Tell me a long story.", "Go on."]
    state = ui.manager.snapshot(sid).state
    _, reference = full_recompute(tiny_cobra, sample_image(48, 40, seed=0), ui.manager.token_ids(sid))
    assert state_rel_diff(state, reference) < 1e-5
    assert len(ui.manager.history(other)) == 1  # the other user saw nothing of it
    del state, reference
    ui.close(sid)
    assert loose_states(ui.manager) <= baseline_states  # every state left is one the store keeps


def test_stop_pressed_many_times_at_once_ends_the_reply_once(tiny_cobra, images, slow_steps):
    ui = handlers(tiny_cobra)
    sid = ui.open_tab()
    ui.stop(sid)  # nothing in flight yet
    ui.stop(None)
    ui.stop("no-such-session")
    stream = ui.send(images["A"], "Tell me a long story.", sid, ParamValues(max_new_tokens=200))
    next(stream), next(stream)
    presses = [threading.Thread(target=ui.stop, args=(sid,)) for _ in range(8)]
    for t in presses:
        t.start()
    for t in presses:
        t.join()
    _, chat, box = last(stream)
    speed_lines = [m["metadata"]["title"] for m in chat if m.get("metadata")]
    assert box == "" and len(speed_lines) == 1 and speed_lines[0].endswith(" · stopped")
    assert len(ui.manager.history(sid)) == 1 and ui.manager.stats()["replies_in_flight"] == 0
    ui.stop(sid)  # and once more afterwards
    _, chat, _ = last(ui.send(images["A"], "Short now.", sid, GREEDY))
    assert [m["content"] for m in chat if m["role"] == "user"] == ["Tell me a long story.", "Short now."]
    _, reference = full_recompute(tiny_cobra, sample_image(48, 40, seed=0), ui.manager.token_ids(sid))
    assert state_rel_diff(ui.manager.snapshot(sid).state, reference) < 1e-5


def test_a_session_evicted_while_it_replies_finishes_exactly(tiny_cobra, images, slow_steps):
    """The memory budget holds about one image's embeddings and a state: another user's turn in the middle of A's
    reply evicts A's cached entries. A's reply is unaffected and its next turn rebuilds what it needs."""
    probe = SessionManager(tiny_cobra)
    sid = probe.open_session()
    probe.set_image(sid, sample_image(48, 40, seed=0))
    one_image = probe.stats()["bytes_in_use"]  # embeddings + the image-prefix state
    manager = SessionManager(tiny_cobra, memory_budget_bytes=int(one_image * 1.5))
    ui = ChatHandlers(manager, notifier=RecordingNotifier(), stream_every_s=0)
    a, b = ui.open_tab(), ui.open_tab()
    stream = ui.send(images["A"], "Tell me a long story.", a, ParamValues(max_new_tokens=60))
    next(stream), next(stream)
    evictions = manager.stats()["evictions"]
    last(ui.send(images["B"], "Quick question?", b, GREEDY))  # B's image and states push A's out
    assert manager.stats()["evictions"] > evictions
    image_a = session_of(manager, a).image_key
    a_keys = {("embeds", (manager.engine.identity, image_a)), manager.engine.keys(image_a, [])[0]}
    assert not a_keys & set(entry_keys(manager.store.memory))  # A's image caches are gone while its reply streams
    last(stream)
    last(ui.send(images["B"], "Another one?", b, GREEDY))  # and again, now that A's reply is saved
    assert not set(stored_keys(manager, a)) & set(entry_keys(manager.store.memory))
    rebuilds = manager.stats()["rebuilds"]
    last(ui.send(images["A"], "And then?", a, GREEDY))
    assert manager.stats()["rebuilds"] > rebuilds  # A's state was recomputed from its history, nothing lost
    for sid, seed in ((a, 0), (b, 1)):
        _, reference = full_recompute(tiny_cobra, sample_image(48, 40, seed=seed), manager.token_ids(sid))
        assert state_rel_diff(manager.snapshot(sid).state, reference) < 1e-5
    assert manager.stats()["peak_bytes"] <= manager.stats()["budget_bytes"]
