"""Cached turns equal a full recompute: six-turn conversations, regenerate/undo/edit, stop, abandon, images, score."""

import gc

import pytest

from cobra_app.generation import SamplingParams
from cobra_app.sessions import ReplyInProgress, SessionManager
from cobra_app.sessions.session import reply_segment
from tests.helpers import sample_image
from tests.sessions.support import (
    MESSAGES,
    RecordingModel,
    drain,
    full_recompute,
    full_recompute_reply,
    rel_diff,
    sampled,
    session_of,
    state_rel_diff,
)

TOL = 1e-5  # relative, fp32


def assert_state_is_full_recompute(manager, sid, cobra, image):
    ids = manager.token_ids(sid)
    _, state = full_recompute(cobra, image, ids)
    cached = manager.snapshot(sid).state
    assert cached.seqlen == state.seqlen
    assert state_rel_diff(cached, state) < TOL


@pytest.mark.parametrize("history", ["release", "generated"])
@pytest.mark.parametrize("with_image", [True, False], ids=["image", "text-only"])
@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "sampled"])
def test_six_turns_cached_equal_full_recompute(cobra, with_image, greedy, history):
    image = sample_image() if with_image else None
    model = RecordingModel(cobra)  # observe the logits every decode step really produced
    manager = SessionManager(model, history=history)
    sid = manager.open_session()
    manager.set_image(sid, image)
    turn_logits, turn_stats, previous_reply = [], [], []
    for i, message in enumerate(MESSAGES):
        model.logits.clear()
        params = SamplingParams(max_new_tokens=6 + i) if greedy else sampled(seed=100 + i, max_new_tokens=6 + i)
        reply = manager.send(sid, message, params)
        text = drain(reply)
        before = manager.snapshot(sid, i, "before")
        turn_logits.append([before.logits, *model.logits])  # the logits each reply token was chosen from
        turn_stats.append(reply.stats)
        assert manager.history(sid)[i] == (message, text)
        # read: only what follows the stored state, at most the previous reply's history ids and this message
        exchange = session_of(manager, sid).exchanges[i]
        assert reply.stats.rebuilt_tokens == 0 and reply.stats.cache_hit
        assert 0 < reply.stats.prefill_tokens <= len(exchange.user_ids) + len(previous_reply)
        if history == "generated" and i:  # the decoder's state is kept: the last reply id and EOS are left
            assert reply.stats.prefill_tokens <= len(exchange.user_ids) + 2
        previous_reply = exchange.reply_ids

    ids = manager.token_ids(sid)
    _, full_state = full_recompute(cobra, image, ids)
    assert state_rel_diff(manager.snapshot(sid).state, full_state) < TOL
    assert manager.snapshot(sid).state.seqlen == full_state.seqlen == len(ids) + (16 if with_image else 0)

    session = session_of(manager, sid)
    pos = 0
    for i, turn in enumerate(session.exchanges):
        pos += len(turn.user_ids)
        assert len(turn_logits[i]) == len(turn.generated_ids) >= 1
        # reply token j was chosen from the logits after the prompt and the reply's first j ids
        reply_logits, _ = full_recompute(cobra, image, ids[:pos] + turn.generated_ids[:-1])
        for j, logits in enumerate(turn_logits[i]):
            assert rel_diff(logits, reply_logits[pos + j - 1]) < TOL, (i, j)
        assert (turn.reply, turn.reply_ids) == reply_segment(turn.generated_ids, history, cobra.turns,
                                                             cobra.tokenizer)
        # the same reply as a stateless pipeline reading the whole conversation from scratch
        params = SamplingParams(max_new_tokens=6 + i) if greedy else sampled(seed=100 + i, max_new_tokens=6 + i)
        assert full_recompute_reply(cobra, image, ids[:pos], params) == turn.generated_ids
        pos += len(turn.reply_ids)
        # the state at the end of each exchange equals the recompute of the prefix it closes
        _, prefix_state = full_recompute(cobra, image, ids[:pos])
        assert state_rel_diff(manager.snapshot(sid, i, "after").state, prefix_state) < TOL
        assert turn_stats[i].context_tokens == pos
    assert pos == len(ids)


def _conversation(manager, sid, n, seed0=0):
    for i in range(n):
        drain(manager.send(sid, MESSAGES[i], sampled(seed0 + i)))


def test_regenerate_restores_the_state_before_the_reply(cobra, image):
    manager = SessionManager(cobra)
    sid = manager.open_session()
    manager.set_image(sid, image)
    _conversation(manager, sid, 2)
    drain(manager.send(sid, MESSAGES[2], sampled(7)))
    original = session_of(manager, sid).exchanges[-1].generated_ids
    same = manager.regenerate(sid, sampled(7))
    drain(same)
    assert session_of(manager, sid).exchanges[-1].generated_ids == original  # same seed, same start: same reply
    assert same.stats.prefill_tokens == 0 and same.stats.cache_hit
    for seed in (8, 9):
        reply = manager.regenerate(sid, sampled(seed, max_new_tokens=10))
        text = drain(reply)
        assert len(manager.history(sid)) == 3 and manager.history(sid)[-1] == (MESSAGES[2], text)
        assert_state_is_full_recompute(manager, sid, cobra, image)
        ids = manager.token_ids(sid)
        turn = session_of(manager, sid).exchanges[-1]
        prompt = ids[: len(ids) - len(turn.reply_ids)]
        assert full_recompute_reply(cobra, image, prompt, sampled(seed, max_new_tokens=10)) == turn.generated_ids


def test_undo_then_continue(cobra, image):
    manager = SessionManager(cobra)
    sid = manager.open_session()
    manager.set_image(sid, image)
    _conversation(manager, sid, 3)
    ids_after_two = manager.token_ids(sid)[: sum(len(t.user_ids) + len(t.reply_ids)
                                                 for t in session_of(manager, sid).exchanges[:2])]
    manager.undo(sid)
    assert len(manager.history(sid)) == 2 and manager.token_ids(sid) == ids_after_two
    assert_state_is_full_recompute(manager, sid, cobra, image)
    reply = manager.send(sid, "And now?", sampled(3))
    drain(reply)
    assert reply.stats.cache_hit and reply.stats.rebuilt_tokens == 0  # resumed from the saved turn-2 state
    assert_state_is_full_recompute(manager, sid, cobra, image)
    manager.undo(sid)
    manager.undo(sid)
    manager.undo(sid)
    assert manager.history(sid) == [] and manager.token_ids(sid) == []
    drain(manager.send(sid, "Hello again", sampled(4)))
    assert_state_is_full_recompute(manager, sid, cobra, image)


@pytest.mark.parametrize("turn_index", [0, 1, 3])
def test_edit_restores_the_state_at_that_turn(cobra, image, turn_index):
    manager = SessionManager(cobra)
    sid = manager.open_session()
    manager.set_image(sid, image)
    _conversation(manager, sid, 4)
    kept = manager.history(sid)[:turn_index]
    reply = manager.edit(sid, turn_index, "Edited: what colour is the sofa?", sampled(42))
    text = drain(reply)
    assert manager.history(sid) == kept + [("Edited: what colour is the sofa?", text)]
    edited = session_of(manager, sid).exchanges[turn_index]
    previous = session_of(manager, sid).exchanges[turn_index - 1].reply_ids if turn_index else []
    assert len(edited.user_ids) <= reply.stats.prefill_tokens <= len(edited.user_ids) + len(previous)
    assert reply.stats.rebuilt_tokens == 0  # started from the state stored at that turn
    assert_state_is_full_recompute(manager, sid, cobra, image)
    ids = manager.token_ids(sid)
    turn = session_of(manager, sid).exchanges[-1]
    prompt = ids[: len(ids) - len(turn.reply_ids)]
    assert full_recompute_reply(cobra, image, prompt, sampled(42)) == turn.generated_ids
    drain(manager.send(sid, "Continue.", sampled(43)))
    assert_state_is_full_recompute(manager, sid, cobra, image)


@pytest.mark.parametrize("history", ["release", "generated"])
def test_stop_mid_reply_keeps_the_partial_reply_and_the_next_turn_equals_full_recompute(cobra, image, history):
    manager = SessionManager(cobra, history=history)
    sid = manager.open_session()
    manager.set_image(sid, image)
    drain(manager.send(sid, MESSAGES[0], sampled(1)))
    params = SamplingParams(max_new_tokens=40)
    reply = manager.send(sid, MESSAGES[1], params)
    streamed = [next(reply) for _ in range(3)]
    manager.stop(sid)
    assert list(reply) == [] and reply.done and reply.stats.finish_reason == "stopped"
    turn = session_of(manager, sid).exchanges[-1]
    assert 3 <= len(turn.generated_ids) < 40
    assert (turn.reply, turn.reply_ids) == reply_segment(turn.generated_ids, history, cobra.turns, cobra.tokenizer)
    assert manager.history(sid)[-1] == (MESSAGES[1], cobra.tokenizer.decode(turn.generated_ids,
                                                                              skip_special_tokens=True))
    assert manager.history(sid)[-1][1].startswith("".join(streamed))
    assert_state_is_full_recompute(manager, sid, cobra, image)  # the state contains exactly the partial reply

    nxt = manager.send(sid, MESSAGES[2], sampled(5))
    drain(nxt)
    ids = manager.token_ids(sid)
    last = session_of(manager, sid).exchanges[-1]
    prompt = ids[: len(ids) - len(last.reply_ids)]
    assert turn.reply_ids == prompt[-len(turn.reply_ids) - len(last.user_ids): -len(last.user_ids)]
    assert full_recompute_reply(cobra, image, prompt, sampled(5)) == last.generated_ids
    assert_state_is_full_recompute(manager, sid, cobra, image)


def test_stop_before_the_first_token_writes_the_release_empty_reply(cobra, image):
    manager = SessionManager(cobra)
    sid = manager.open_session()
    manager.set_image(sid, image)
    reply = manager.send(sid, MESSAGES[0], SamplingParams(max_new_tokens=8))
    reply.close()
    assert list(reply) == [] and reply.stats.finish_reason == "stopped" and reply.stats.new_tokens == 0
    assert manager.history(sid) == [(MESSAGES[0], "")]
    empty = cobra.turns.assistant_turn_ids("")  # " " + EOS, as the release writes an empty reply
    assert manager.token_ids(sid)[-len(empty):] == empty
    assert_state_is_full_recompute(manager, sid, cobra, image)
    drain(manager.send(sid, MESSAGES[1], sampled(2)))
    assert_state_is_full_recompute(manager, sid, cobra, image)


def test_stop_from_another_thread_while_streaming(cobra, image):
    import threading

    manager = SessionManager(cobra)
    sid = manager.open_session()
    manager.set_image(sid, image)
    reply = manager.send(sid, MESSAGES[0], SamplingParams(max_new_tokens=200))
    first, got = threading.Event(), []

    def consume():
        for delta in reply:
            got.append(delta)
            first.set()
        first.set()

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert first.wait(30)
    manager.stop(sid)  # returns once the reply is saved
    assert session_of(manager, sid).active is None
    consumer.join(30)
    assert not consumer.is_alive() and reply.stats.finish_reason in ("stopped", "eos")
    assert manager.history(sid)[0][1].startswith("".join(got))
    assert_state_is_full_recompute(manager, sid, cobra, image)


def test_an_abandoned_reply_is_finished_by_the_next_call(cobra, image):
    manager = SessionManager(cobra)
    sid = manager.open_session()
    manager.set_image(sid, image)
    reply = manager.send(sid, MESSAGES[0], SamplingParams(max_new_tokens=30))
    next(reply)
    del reply
    gc.collect()
    drain(manager.send(sid, MESSAGES[1], sampled(1)))  # no ReplyInProgress: the abandoned reply was closed
    assert len(manager.history(sid)) == 2 and 1 <= len(session_of(manager, sid).exchanges[0].generated_ids) < 30
    assert_state_is_full_recompute(manager, sid, cobra, image)
    with manager.send(sid, MESSAGES[2], SamplingParams(max_new_tokens=30)) as reply:
        next(reply)
    assert reply.done and manager.stats()["replies_in_flight"] == 0


def test_one_reply_in_flight_per_session(cobra, image):
    manager = SessionManager(cobra)
    sid, other = manager.open_session(), manager.open_session()
    drain(manager.send(sid, MESSAGES[0], sampled(0)))
    reply = manager.send(sid, MESSAGES[1], SamplingParams(max_new_tokens=10))
    for call in (lambda: manager.send(sid, "x", sampled(1)), lambda: manager.regenerate(sid, sampled(1)),
                 lambda: manager.edit(sid, 0, "x", sampled(1)), lambda: manager.undo(sid),
                 lambda: manager.reset(sid), lambda: manager.set_image(sid, image)):
        with pytest.raises(ReplyInProgress) as err:
            call()
        assert "answering" in err.value.user_message
    assert manager.history(sid)[-1] == (MESSAGES[1], None)
    drain(manager.send(other, MESSAGES[0], sampled(0)))  # other sessions are not blocked
    probs = manager.score(sid, "Is there a dog?")  # a probe does not touch the conversation
    assert sum(probs.values()) == pytest.approx(1.0)
    drain(reply)
    assert manager.history(sid)[-1][1] is not None
    drain(manager.send(sid, MESSAGES[2], sampled(2)))
    assert_state_is_full_recompute(manager, sid, cobra, None)


def test_image_rules_and_shared_embeddings(cobra):
    manager = SessionManager(cobra)
    a, b, c = (manager.open_session() for _ in range(3))
    for sid in (a, b, c):
        manager.set_image(sid, sample_image(seed=3))  # equal content, different objects
    assert manager.stats()["image_encodes"] == 1
    drain(manager.send(a, MESSAGES[0], sampled(0)))
    manager.set_image(a, sample_image(seed=3))  # the same image again keeps the conversation
    assert len(manager.history(a)) == 1
    manager.set_image(a, sample_image(seed=4))  # a new image starts a new conversation
    assert manager.history(a) == [] and manager.stats()["image_encodes"] == 2
    drain(manager.send(a, MESSAGES[1], sampled(1)))
    assert_state_is_full_recompute(manager, a, cobra, sample_image(seed=4))
    manager.set_image(a, None)  # text-only from here
    assert manager.history(a) == []
    drain(manager.send(a, MESSAGES[2], sampled(2)))
    assert_state_is_full_recompute(manager, a, cobra, None)
    drain(manager.send(b, MESSAGES[0], sampled(0)))
    manager.reset(b)  # reset keeps the image
    drain(manager.send(b, MESSAGES[0], sampled(0)))
    assert_state_is_full_recompute(manager, b, cobra, sample_image(seed=3))
    assert manager.stats()["image_encodes"] == 2


def test_score_probes_the_image_without_touching_the_conversation(cobra, image):
    manager = SessionManager(cobra)
    sid = manager.open_session()
    manager.set_image(sid, image)
    _conversation(manager, sid, 2)
    history, ids = manager.history(sid), manager.token_ids(sid)
    state = manager.snapshot(sid).state.clone()
    encodes = manager.stats()["image_encodes"]
    for answers in ("yes-no", "true-false"):
        probs = manager.score(sid, "Is there a cat in the image?", answers)
        expected = cobra.score(image, "Is there a cat in the image?", answers)
        assert probs.keys() == expected.keys()
        assert all(probs[k] == pytest.approx(expected[k], rel=1e-5, abs=1e-7) for k in probs)
    assert manager.history(sid) == history and manager.token_ids(sid) == ids
    assert state_rel_diff(manager.snapshot(sid).state, state) == 0
    assert manager.stats()["image_encodes"] == encodes  # cached embeddings were reused
    text_only = manager.open_session()
    assert manager.score(text_only, "Is there a cat?") == pytest.approx(cobra.score(None, "Is there a cat?"),
                                                                        rel=1e-5)


def test_follow_up_turns_cost_only_their_new_tokens(cobra, image):
    manager = SessionManager(cobra)
    sid = manager.open_session()
    manager.set_image(sid, image)
    previous_reply = []
    for i in range(6):
        reply = manager.send(sid, "Tell me more.", SamplingParams(max_new_tokens=5))
        drain(reply)
        stats, exchange = reply.stats, session_of(manager, sid).exchanges[-1]
        # everything the model read: the new part of the prompt (one chunk), then one step per token but the last
        new = len(exchange.user_ids) + len(previous_reply)
        assert stats.processed_tokens == stats.prefill_tokens + stats.new_tokens - 1 <= new + 5 - 1
        assert stats.image_tokens == 16 and stats.prompt_tokens == 16 + stats.context_tokens - len(exchange.reply_ids)
        assert stats.cached_tokens == stats.prompt_tokens - stats.prefill_tokens  # the rest came from the store
        previous_reply = exchange.reply_ids
    assert stats.context_tokens == len(manager.token_ids(sid)) > 3 * stats.processed_tokens
