"""Plain-words errors: context full, vanished sessions, empty messages, missing turns."""

import pytest

from cobra_app.generation import SamplingParams
from cobra_app.sessions import (
    ContextFull,
    EmptyMessage,
    NoSuchTurn,
    SessionError,
    SessionManager,
    SessionNotFound,
)
from tests.helpers import sample_image
from tests.sessions.support import assert_evicted_first, drain, full_recompute, state_rel_diff, stored_keys


def test_context_full_is_reported_before_prefill_and_the_conversation_stays_usable(cobra):
    limit = 70
    manager = SessionManager(cobra, max_context_tokens=limit)
    assert SessionManager(cobra).max_context_tokens == cobra.config.llm_max_length  # the release's default
    sid = manager.open_session()
    manager.set_image(sid, sample_image())
    params = SamplingParams(max_new_tokens=30)
    replies = []
    with pytest.raises(ContextFull) as err:
        for _ in range(10):
            reply = manager.send(sid, "Is the cup left of the plate?", params)
            drain(reply)
            replies.append(reply.stats)
    assert isinstance(err.value, SessionError)
    assert "context limit (70 tokens)" in err.value.user_message and "new conversation" in err.value.user_message
    assert all(s.context_tokens <= limit for s in replies)
    assert replies[-1].finish_reason == "context"  # the reply was cut where the context ends, not failed
    assert len(manager.history(sid)) == len(replies)  # the refused message left the conversation as it was
    assert len(manager.token_ids(sid)) == replies[-1].context_tokens <= limit
    _, state = full_recompute(cobra, sample_image(), manager.token_ids(sid))
    assert state_rel_diff(manager.snapshot(sid).state, state) < 1e-5
    manager.undo(sid)  # making room works, as does a new conversation
    drain(manager.send(sid, "Is the cup left of the plate?", SamplingParams(max_new_tokens=3)))
    manager.reset(sid)
    drain(manager.send(sid, "Hello", SamplingParams(max_new_tokens=3)))

    with pytest.raises(ContextFull) as err:
        manager.send(sid, "word " * 200, params)
    assert "too long" in err.value.user_message and "shorten" in err.value.user_message
    with pytest.raises(ContextFull):
        manager.edit(sid, 0, "word " * 200, params)
    assert len(manager.history(sid)) == 1


def test_vanished_sessions_say_so_in_plain_words(cobra):
    manager = SessionManager(cobra)
    with pytest.raises(SessionNotFound) as err:
        manager.send("no-such-session", "Hello", SamplingParams())
    assert err.value.reason == "unknown" and "start a new conversation" in err.value.user_message
    sid, other = manager.open_session(), manager.open_session()
    assert len(sid) >= 20 and sid != other
    drain(manager.send(sid, "Hello", SamplingParams(max_new_tokens=3)))
    drain(manager.send(other, "Hi there", SamplingParams(max_new_tokens=3)))
    keys = stored_keys(manager, sid)
    manager.close_session(sid)
    manager.close_session(sid)  # closing twice is harmless
    for call in (lambda: manager.history(sid), lambda: manager.undo(sid), lambda: manager.set_image(sid, None),
                 lambda: manager.score(sid, "Is there a cat?"), lambda: manager.regenerate(sid, SamplingParams())):
        with pytest.raises(SessionNotFound) as err:
            call()
        assert err.value.reason == "closed" and "closed" in err.value.user_message
    assert_evicted_first(manager.store.memory, keys)  # its states go before the other session's


def test_closing_a_session_with_a_reply_in_flight_stops_it(cobra):
    manager = SessionManager(cobra)
    sid, other = manager.open_session(), manager.open_session()
    drain(manager.send(other, "Hi there", SamplingParams(max_new_tokens=3)))
    reply = manager.send(sid, "Hello", SamplingParams(max_new_tokens=30))
    next(reply)
    keys = stored_keys(manager, sid)
    manager.close_session(sid)
    assert reply.done and list(reply) == [] and manager.stats()["sessions"] == 1
    assert_evicted_first(manager.store.memory, keys)


def test_empty_messages_and_missing_turns(cobra):
    manager = SessionManager(cobra)
    sid = manager.open_session()
    for message in ("", "   \n", "<image>", " <image> "):
        with pytest.raises(EmptyMessage) as err:
            manager.send(sid, message, SamplingParams())
        assert err.value.user_message == "Please type a message."
    with pytest.raises(NoSuchTurn) as err:
        manager.regenerate(sid, SamplingParams())
    assert "nothing" in err.value.user_message or "no reply" in err.value.user_message
    with pytest.raises(NoSuchTurn):
        manager.undo(sid)
    drain(manager.send(sid, "Hello", SamplingParams(max_new_tokens=3)))
    for index in (-1, 1, 5):
        with pytest.raises(NoSuchTurn):
            manager.edit(sid, index, "Hi", SamplingParams())
    with pytest.raises(EmptyMessage):
        manager.edit(sid, 0, " ", SamplingParams())
    with pytest.raises(EmptyMessage):
        manager.score(sid, "")
    assert len(manager.history(sid)) == 1 and manager.stats()["replies_in_flight"] == 0


def test_sampling_params_default_and_type_check(cobra):
    manager = SessionManager(cobra)
    sid = manager.open_session()
    with pytest.raises(TypeError):
        manager.send(sid, "Hello", {"max_new_tokens": 3})
    assert manager.history(sid) == []
    reply = manager.send(sid, "Hello")  # None: SamplingParams() defaults (greedy)
    next(reply)
    reply.close()
    assert reply.stats.finish_reason == "stopped" and len(manager.history(sid)) == 1
