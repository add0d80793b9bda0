"""Spec: the reference backend - each request read from scratch as the release builds its prompt, with the stats the
API reports; it stops when closed from any thread."""

import threading

import pytest

from cobra_app.api.reference import ReferenceBackend, conversation_ids
from cobra_app.generation import SamplingParams
from cobra_app.sessions import ContextFull, EmptyMessage


def run(reply) -> list:
    return list(reply.events())


def test_a_first_turn_is_the_pipeline_s_own_reply(cobra, image):
    backend = ReferenceBackend(cobra)
    reply = backend.complete(image, [("user", "What is in the image?")], SamplingParams(max_new_tokens=12))
    events = run(reply)
    assert reply.text == "".join(e.text for e in events)
    assert reply.text == cobra.generate(image, "What is in the image?", max_new_tokens=12)
    ids = cobra.turns.user_turn_ids("What is in the image?", first=True)
    generated = [e.token_id for e in events if e.token_id is not None]
    stats = reply.stats
    patches = cobra.encode_image(image).shape[1]
    assert (stats.prompt_tokens, stats.cached_tokens) == (patches + len(ids), 0)
    assert stats.new_tokens == len(generated)  # EOS included when generated, as the sessions count
    assert stats.processed_tokens == stats.prompt_tokens + len(generated) - 1  # the last token is never read
    assert stats.finish_reason in ("eos", "length")


def test_the_prompt_is_the_release_s_turn_strings_tokenized_one_by_one(cobra):
    turns = [("user", "Hi <image> there"), ("assistant", "  A cube.\n"), ("user", "Which colour?"),
             ("assistant", ""), ("user", "Really?")]
    t = cobra.turns
    expected = (t.user_turn_ids("Hi <image> there", first=True) + t.assistant_turn_ids("A cube.")
                + t.user_turn_ids("Which colour?", first=False) + t.assistant_turn_ids(" ")
                + t.user_turn_ids("Really?", first=False))
    assert conversation_ids(t, turns) == expected
    text = t.builder.conversation_text([("Hi <image> there", "A cube."), ("Which colour?", ""), ("Really?", None)])
    assert cobra.tokenizer.decode(expected) == text


@pytest.mark.parametrize("turns", [[], [("assistant", "Hi")], [("user", "a"), ("user", "b")],
                                   [("user", "a"), ("assistant", "b")], [("system", "x"), ("user", "a")]])
def test_malformed_conversations_are_programming_errors(cobra, turns):
    with pytest.raises(ValueError, match="alternate"):
        conversation_ids(cobra.turns, turns)


def test_empty_messages_and_full_contexts_are_session_errors(cobra):
    backend = ReferenceBackend(cobra, max_context_tokens=40)
    with pytest.raises(EmptyMessage):
        backend.complete(None, [("user", "Hi"), ("assistant", "Yes"), ("user", " <image> ")])
    with pytest.raises(ContextFull) as info:
        backend.complete(None, [("user", "word " * 60)])
    assert "at most 40 tokens" in info.value.user_message


def test_a_reply_that_fills_the_context_ends_with_context(cobra):
    ids = conversation_ids(cobra.turns, [("user", "Hi")])
    backend = ReferenceBackend(cobra, max_context_tokens=len(ids) + 4)
    reply = backend.complete(None, [("user", "Hi")], SamplingParams(max_new_tokens=50))
    tokens = [e.token_id for e in run(reply) if e.token_id is not None]
    assert reply.stats.finish_reason == "context" and len(tokens) == 3  # room for the closing EOS kept


def test_closing_from_another_thread_stops_the_reply(cobra):
    backend = ReferenceBackend(cobra)
    reply = backend.complete(None, [("user", "Hi")], SamplingParams(max_new_tokens=10_000, greedy=False, seed=1))
    events = reply.events()
    next(events)
    worker = threading.Thread(target=lambda: [None for _ in events])
    worker.start()
    reply.close()
    worker.join(timeout=30)
    assert not worker.is_alive() and reply.stats.finish_reason == "stopped"
    assert 1 <= reply.stats.new_tokens < 10_000
    reply.close()  # idempotent


def test_a_reply_closed_before_its_first_token_has_stats(cobra):
    reply = ReferenceBackend(cobra).complete(None, [("user", "Hi")])
    reply.close()
    assert (reply.stats.new_tokens, reply.stats.finish_reason) == (0, "stopped")
    assert list(reply.events()) == []
