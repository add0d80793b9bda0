"""The history holds what the release holds: a reply is decoded, stripped and re-tokenized as the prompt builder's
assistant turn, so the next turns read exactly what the release reads when it re-tokenizes the whole prompt string.

The replies are forced (tests.sessions.support.ForcedReplies) to the three cases where generated ids and the
release's ids differ: a leading space, tokens that are not the tokenizer's canonical merges, bytes that are not valid
UTF-8; and one where they agree.
"""

import pytest

from cobra_app.generation import SamplingParams
from cobra_app.sessions import SessionManager
from tests.sessions.support import ForcedReplies, drain, full_recompute, rel_diff, session_of, state_rel_diff

TOL = 1e-5  # relative, fp32
MESSAGES = ("What is in the image?", "Is there a dog? Answer yes or no.", "Describe the picture.")


def forced_replies(cobra) -> dict[str, list[int]]:
    """Name -> generated ids (each ends with EOS)."""
    turns, vocab = cobra.turns, cobra.tokenizer.get_vocab()
    eos = turns.eos_id
    smile = turns.text_ids("🙂")  # two byte-level tokens; the first alone is half a character
    return {
        "leading space": [*turns.text_ids(" cat"), eos],  # 'Ġcat': stripped, "cat" is 'c' 'at'
        "non-canonical merges": [vocab["A"], vocab["Ġ"], vocab["c"], vocab["a"], vocab["t"], eos],  # "A cat"
        "invalid UTF-8": [smile[0], *turns.text_ids(" ok"), eos],  # decodes to U+FFFD + " ok"
        "canonical": [*turns.text_ids("Yes"), eos],
    }


def release_prompt_ids(cobra, exchanges) -> list[int]:
    """The release's prompt: the whole conversation string (replies decoded and stripped), tokenized whole."""
    text = cobra.turns.builder.conversation_text(exchanges)
    return cobra.tokenizer(text, add_special_tokens=False).input_ids


@pytest.mark.parametrize("case", ["leading space", "non-canonical merges", "invalid UTF-8", "canonical"])
def test_turns_two_and_three_read_what_the_release_reads(cobra, image, case):
    model = ForcedReplies(cobra)
    manager = SessionManager(model)
    sid = manager.open_session()
    manager.set_image(sid, image)
    forced = forced_replies(cobra)[case]
    exchanges, previous_reply_ids, previous_end = [], [], 0
    for turn, message in enumerate(MESSAGES):
        model.force(forced)
        chunks_before = len(model.chunks)
        reply = manager.send(sid, message, SamplingParams(max_new_tokens=len(forced)))
        streamed = drain(reply)
        exchange = session_of(manager, sid).exchanges[-1]
        assert exchange.generated_ids == forced  # the reply really was the forced one
        shown = cobra.tokenizer.decode(forced, skip_special_tokens=True)
        assert streamed == shown and manager.history(sid)[-1] == (message, shown)  # the UI text is unchanged
        assert reply.release_text == shown.strip()
        # the session's logits and state at this turn's prompt are the release's, re-tokenized whole
        ids = release_prompt_ids(cobra, [*exchanges, (message, None)])
        full_logits, full_state = full_recompute(cobra, image, ids)
        assert rel_diff(model.prefill_logits[chunks_before], full_logits[-1]) < TOL
        assert state_rel_diff(manager.snapshot(sid, turn, "before").state, full_state) < TOL
        assert manager.token_ids(sid)[: len(ids)] == ids
        if turn:  # one chunk from the stored state: O(new tokens)
            assert model.chunks[chunks_before] == reply.stats.prefill_tokens == len(ids) - previous_end
            new = len(previous_reply_ids) + len(exchange.user_ids)
            assert reply.stats.prefill_tokens == (1 + len(exchange.user_ids) if case == "canonical" else new)
            assert reply.stats.cache_hit and reply.stats.rebuilt_tokens == 0
        previous_reply_ids = exchange.reply_ids
        previous_end = len(ids) + len(forced) - 1 if case == "canonical" else len(ids)  # where the next one resumes
        assert (exchange.reply_ids == forced) == (case == "canonical")
        exchanges.append((message, shown.strip()))
    _, full_state = full_recompute(cobra, image, release_prompt_ids(cobra, exchanges))
    assert state_rel_diff(manager.snapshot(sid).state, full_state) < TOL


def test_generated_history_keeps_the_generated_ids(cobra, image):
    model = ForcedReplies(cobra)
    manager = SessionManager(model, history="generated")
    sid = manager.open_session()
    manager.set_image(sid, image)
    forced = forced_replies(cobra)["non-canonical merges"]
    for message in MESSAGES[:2]:
        model.force(forced)
        reply = manager.send(sid, message, SamplingParams(max_new_tokens=len(forced)))
        drain(reply)
        assert session_of(manager, sid).exchanges[-1].reply_ids == forced
    assert reply.stats.prefill_tokens == len(session_of(manager, sid).exchanges[-1].user_ids) + 1  # EOS + message
    _, full_state = full_recompute(cobra, image, manager.token_ids(sid))
    assert state_rel_diff(manager.snapshot(sid).state, full_state) < TOL


def test_generated_and_release_ids_agree_when_the_reply_is_canonical(cobra, image):
    managers = [SessionManager(cobra, history=mode) for mode in ("release", "generated")]
    ids = []
    for manager in managers:
        sid = manager.open_session()
        manager.set_image(sid, image)
        drain(manager.send(sid, MESSAGES[0], SamplingParams(max_new_tokens=6)))
        ids.append((manager, sid))
    (release, a), (generated, b) = ids
    turn_a, turn_b = session_of(release, a).exchanges[0], session_of(generated, b).exchanges[0]
    assert turn_a.generated_ids == turn_b.generated_ids  # the same reply was generated
    text = cobra.tokenizer.decode(turn_a.generated_ids, skip_special_tokens=True)
    assert turn_a.reply_ids == cobra.turns.assistant_turn_ids(text)
    eos = cobra.turns.eos_id
    assert turn_b.reply_ids == turn_b.generated_ids + ([] if turn_b.generated_ids[-1] == eos else [eos])


def test_a_reply_that_grows_past_the_context_when_re_tokenized_is_cut_to_fit(cobra, image):
    """Re-tokenizing can take more ids than were generated ("A cat" as 6 generated ids is 3 ids, but half a
    character is 3 byte ids): the history never exceeds the context limit."""
    model = ForcedReplies(cobra)
    smile = cobra.turns.text_ids("🙂")
    forced = [smile[0]] * 20  # twenty half characters: each decodes to U+FFFD, three byte ids when re-tokenized
    prompt = len(cobra.turns.user_turn_ids(MESSAGES[0], first=True))
    limit = prompt + 21
    manager = SessionManager(model, max_context_tokens=limit)
    sid = manager.open_session()
    model.force(forced)
    reply = manager.send(sid, MESSAGES[0], SamplingParams(max_new_tokens=40))
    drain(reply)
    assert reply.stats.finish_reason == "context" and reply.stats.context_tokens <= limit
    assert len(manager.token_ids(sid)) == reply.stats.context_tokens
    assert manager.token_ids(sid)[prompt:] == cobra.turns.assistant_turn_ids(manager.history(sid)[0][1])
    _, full_state = full_recompute(cobra, None, manager.token_ids(sid))
    assert state_rel_diff(manager.snapshot(sid).state, full_state) < TOL
