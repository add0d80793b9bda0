"""Stateless completions (`SessionManager.complete`): a client resends the whole conversation each turn; it resumes
from the longest stored prefix, whoever stored it, and replies exactly as a live session or a full recompute would."""

import pytest
import torch

from cobra_app.generation import SamplingParams
from cobra_app.sessions import BadConversation, ContextFull, EmptyMessage, SessionManager
from tests.sessions.support import (
    MESSAGES,
    drain,
    full_recompute,
    full_recompute_reply,
    rel_diff,
    sampled,
    session_of,
)

GREEDY = SamplingParams(max_new_tokens=8)


def conversation(messages, replies):
    """(role, text) pairs: the messages interleaved with the replies, ending with the last message."""
    pairs = []
    for i, message in enumerate(messages):
        pairs.append(("user", message))
        if i < len(replies):
            pairs.append(("assistant", replies[i]))
    return pairs


def test_a_resent_conversation_reads_only_what_is_new_and_replies_as_a_full_recompute(cobra, image):
    manager = SessionManager(cobra)
    replies = []
    for turn in range(4):
        messages = conversation(MESSAGES[: turn + 1], replies)
        reply = manager.complete(image, messages, sampled(turn))
        drain(reply)
        stats = reply.stats
        prompt = manager.conversation_ids(messages)
        assert stats.prompt_tokens == 16 + len(prompt) and stats.image_tokens == 16
        assert stats.cached_tokens + stats.prefill_tokens == stats.prompt_tokens - (16 if turn == 0 else 0)
        assert stats.processed_tokens == (16 if turn == 0 else 0) + stats.prefill_tokens + stats.new_tokens - 1
        if turn:  # all but the last reply's history ids (or just its last id and EOS) and the new message
            user_ids = cobra.turns.user_turn_ids(MESSAGES[turn], first=False)
            reply_ids = cobra.turns.assistant_turn_ids(replies[-1])
            assert stats.cached_tokens >= stats.prompt_tokens - len(user_ids) - len(reply_ids)
        generated = full_recompute_reply(cobra, image, prompt, sampled(turn))
        assert reply.text == cobra.tokenizer.decode(generated, skip_special_tokens=True)
        assert reply.release_text == reply.text.strip()
        replies.append(reply.release_text)
    assert manager.stats()["replies_in_flight"] == 0


def test_a_session_and_a_client_resending_its_conversation_meet_in_one_store(cobra, image):
    manager = SessionManager(cobra)
    sid = manager.open_session()
    manager.set_image(sid, image)
    shown = []
    for message in MESSAGES[:3]:
        reply = manager.send(sid, message, GREEDY)
        drain(reply)
        shown.append(reply.release_text)
    # the client resends the session's conversation and a new message: only the new turn is read
    messages = conversation([*MESSAGES[:3], MESSAGES[3]], shown)
    reply = manager.complete(image, messages, GREEDY)
    drain(reply)
    session_ids = manager.token_ids(sid)
    assert manager.conversation_ids(messages)[: len(session_ids)] == session_ids
    user_ids = cobra.turns.user_turn_ids(MESSAGES[3], first=False)
    last_reply = session_of(manager, sid).exchanges[-1].reply_ids
    assert reply.stats.prompt_tokens - reply.stats.cached_tokens <= len(user_ids) + len(last_reply)
    # and it is the reply the session gives to the same message
    expected = manager.send(sid, MESSAGES[3], GREEDY)
    assert drain(expected) == reply.text


def test_two_users_asking_the_same_first_question_about_the_same_image_share_its_state(cobra, image):
    manager = SessionManager(cobra)
    a, b = manager.open_session(), manager.open_session()
    for sid in (a, b):
        manager.set_image(sid, image.copy())
    first = manager.send(a, MESSAGES[0], GREEDY)
    drain(first)
    second = manager.send(b, MESSAGES[0], GREEDY)
    drain(second)
    assert first.stats.prefill_tokens > 0 and first.stats.cached_tokens == 16
    assert second.stats.prefill_tokens == 0 and second.stats.cached_tokens == second.stats.prompt_tokens
    assert second.text == first.text and manager.stats()["image_encodes"] == 1
    api = manager.complete(image, [("user", MESSAGES[0])], GREEDY)  # and a stateless client too
    drain(api)
    assert api.stats.cached_tokens == api.stats.prompt_tokens and api.text == first.text


def test_token_events_carry_the_raw_model_logprobs(cobra, image):
    manager = SessionManager(cobra)
    messages = [("user", MESSAGES[0])]
    reply = manager.complete(image, messages, sampled(3, max_new_tokens=6), top_logprobs=5)
    events = [e for e in reply.events() if e.token_id is not None]
    assert len(events) == reply.stats.new_tokens
    prompt = manager.conversation_ids(messages)
    generated = [e.token_id for e in events]
    logits, _ = full_recompute(cobra, image, prompt + generated[:-1])
    for j, event in enumerate(events):
        log_probs = torch.log_softmax(logits[len(prompt) - 1 + j, : cobra.vocab_size], dim=-1)
        assert event.logprob == pytest.approx(log_probs[event.token_id].item(), abs=1e-5)
        ids, values = zip(*event.top_logprobs)
        assert len(ids) == 5 and list(values) == sorted(values, reverse=True)
        top = torch.topk(log_probs, 5)
        assert list(ids) == top.indices.tolist()
        assert rel_diff(torch.tensor(values), top.values) < 1e-5
    plain = manager.complete(image, messages, sampled(3, max_new_tokens=6))
    assert all(e.logprob is None and e.top_logprobs == () for e in plain.events())


def test_bad_conversations_are_refused_before_any_work(cobra):
    manager = SessionManager(cobra, max_context_tokens=64)
    for messages in ([], [("assistant", "Hi")], [("user", "a"), ("user", "b")], [("user", "a"), ("assistant", "b")],
                     [("system", "be nice"), ("user", "a")], [("user", 3)], ["user says hi"]):
        with pytest.raises(BadConversation) as err:
            manager.complete(None, messages)
        assert err.value.user_message
    with pytest.raises(EmptyMessage):
        manager.complete(None, [("user", "hello"), ("assistant", "hi"), ("user", " <image> ")])
    with pytest.raises(ContextFull) as err:
        manager.complete(None, [("user", "word " * 100)])
    assert "too long" in err.value.user_message
    with pytest.raises(ContextFull) as err:
        manager.complete(None, [("user", "word " * 10), ("assistant", "word " * 30), ("user", "word " * 10)])
    assert "context limit" in err.value.user_message
    empty_reply = manager.complete(None, [("user", "hello"), ("assistant", ""), ("user", "again")], GREEDY)
    drain(empty_reply)  # an empty assistant message is the release's empty reply (" " + EOS)
    assert manager.stats()["prompt_tokens"] == empty_reply.stats.prompt_tokens


def test_closing_a_completion_mid_stream_keeps_the_store_consistent(cobra, image):
    manager = SessionManager(cobra)
    messages = [("user", MESSAGES[0])]
    reply = manager.complete(image, messages, SamplingParams(max_new_tokens=40))
    next(reply)
    assert manager.stats()["replies_in_flight"] == 1
    reply.close()  # a client gone
    assert reply.done and reply.stats.finish_reason == "stopped" and manager.stats()["replies_in_flight"] == 0
    # the client (or another) resends with the partial reply: resumed from what was stored, exact
    follow_up = [*messages, ("assistant", reply.release_text), ("user", MESSAGES[1])]
    again = manager.complete(image, follow_up, GREEDY)
    drain(again)
    assert again.stats.cached_tokens > 16
    generated = full_recompute_reply(cobra, image, manager.conversation_ids(follow_up), GREEDY)
    assert again.text == cobra.tokenizer.decode(generated, skip_special_tokens=True)
