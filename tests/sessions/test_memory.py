"""One byte budget for snapshots and embeddings: LRU eviction, rebuilds that lose nothing, idle expiry."""

import itertools

import pytest
import torch

from cobra_app.generation import SamplingParams
from cobra_app.model.mamba import LayerState, MambaState
from cobra_app.sessions import MemoryStore, SessionManager, SessionNotFound, Snapshot, measure_nbytes
from tests.helpers import sample_image
from tests.sessions.support import (
    MESSAGES,
    assert_evicted_first,
    drain,
    entry_keys,
    full_recompute,
    full_recompute_reply,
    measured_bytes,
    sampled,
    session_of,
    state_rel_diff,
    stored_keys,
)


def test_measure_nbytes_counts_whole_storages_once():
    base = torch.zeros(4, 10)
    view = base[:, -2:]
    assert measure_nbytes(view) == base.untyped_storage().nbytes() == 160
    assert measure_nbytes([base, view]) == 160  # shared storage counted once
    state = MambaState([LayerState(torch.zeros(1, 8, 4), torch.zeros(1, 8, 2))])
    assert measure_nbytes(Snapshot(state, torch.zeros(5))) == state.nbytes + 20


def test_store_is_lru_under_its_budget():
    store = MemoryStore(100)
    for key in "abc":
        assert store.put(key, torch.zeros(8))  # 32 bytes each
    assert store.get("a") is not None  # a is now the most recently used
    assert store.put("d", torch.zeros(8))  # evicts b
    assert entry_keys(store) == ["c", "a", "d"] and store.evictions == 1 and store.bytes_in_use == 96
    assert not store.put("big", torch.zeros(26))  # 104 bytes > budget: refused, nothing evicted for it
    assert store.oversized == 1 and entry_keys(store) == ["c", "a", "d"]
    assert store.put("a", torch.zeros(16))  # replacing a value re-measures it
    assert store.bytes_in_use == measured_bytes(store) == 96 and entry_keys(store) == ["d", "a"]
    assert store.put("e", torch.zeros(1))  # 100 bytes in all: fits exactly
    store.demote(["e", "d"])  # e goes first, then d
    assert entry_keys(store) == ["e", "d", "a"]
    for key in "ade":
        store.discard(key)
    assert store.bytes_in_use == 0 and len(store) == 0


def _entry_sizes(cobra, image):
    state = cobra.vlm.llm.initial_state().nbytes
    logits = cobra.vlm.llm.config.padded_vocab_size * 4
    embeds = measure_nbytes(cobra.encode_image(image))
    return state, logits, embeds


@pytest.mark.parametrize("budget_states", [3, 0.5], ids=["few-states", "smaller-than-one-state"])
def test_conversations_continue_through_rebuilds_and_bytes_stay_under_budget(cobra, budget_states):
    images = [sample_image(seed=s) for s in range(4)]
    state_bytes, _, _ = _entry_sizes(cobra, images[0])
    budget = int(budget_states * state_bytes + 1000)
    small = SessionManager(cobra, memory_budget_bytes=budget)
    roomy = SessionManager(cobra)

    def check_budget():
        stats = small.stats()
        assert stats["bytes_in_use"] <= budget and measured_bytes(small.store.memory) == stats["bytes_in_use"]

    sids = {name: [m.open_session() for _ in images] for name, m in (("small", small), ("roomy", roomy))}
    for m, ss in ((small, sids["small"]), (roomy, sids["roomy"])):
        for sid, img in zip(ss, images):
            m.set_image(sid, img)
    check_budget()
    hits_before_rebuild = []
    for turn, k in itertools.product(range(4), range(len(images))):  # interleaved: every turn evicts others' state
        params = sampled(seed=10 * turn + k, max_new_tokens=5)
        reply = small.send(sids["small"][k], MESSAGES[turn], params)
        for _ in reply:
            check_budget()
        hits_before_rebuild.append(reply.stats.cache_hit)
        check_budget()
        drain(roomy.send(sids["roomy"][k], MESSAGES[turn], params))
    for k, img in enumerate(images):  # nothing was lost: same conversations, states equal a full recompute
        a, b = sids["small"][k], sids["roomy"][k]
        assert small.history(a) == roomy.history(b) and small.token_ids(a) == roomy.token_ids(b)
        ids = small.token_ids(a)
        _, state = full_recompute(cobra, img, ids)
        assert state_rel_diff(small.snapshot(a).state, state) < 1e-5
        check_budget()
    stats = small.stats()
    assert stats["rebuilds"] > 0 and stats["misses"] > 0 and not all(hits_before_rebuild[len(images):])
    assert stats["peak_bytes"] <= budget
    if budget_states >= 1:
        assert stats["evictions"] > 0
    else:  # nothing fits: every turn rebuilds from the image, re-encoded each time
        assert all(isinstance(k, tuple) and k[0] == "embeds" for k in entry_keys(small.store.memory))
        assert stats["oversized"] > 0 and stats["image_encodes"] > len(images)
    assert roomy.stats()["rebuilds"] == 0 and roomy.stats()["image_encodes"] == len(images)


def test_regenerate_and_edit_after_eviction_rebuild_from_history(cobra):
    image = sample_image(seed=7)
    state_bytes, logits_bytes, _ = _entry_sizes(cobra, image)
    manager = SessionManager(cobra, memory_budget_bytes=state_bytes + logits_bytes + 100)
    sid, other = manager.open_session(), manager.open_session()
    manager.set_image(sid, image)
    for i in range(3):
        drain(manager.send(sid, MESSAGES[i], sampled(i)))
    drain(manager.send(other, "Hello", sampled(9)))  # evicts everything of `sid`
    reply = manager.regenerate(sid, sampled(2))
    drain(reply)
    assert not reply.stats.cache_hit and reply.stats.rebuilt_tokens > 0
    ids = manager.token_ids(sid)
    turn = session_of(manager, sid).exchanges[-1]
    prompt = ids[: len(ids) - len(turn.reply_ids)]
    assert full_recompute_reply(cobra, image, prompt, sampled(2)) == turn.generated_ids
    drain(manager.send(other, "Hello", sampled(9)))
    reply = manager.edit(sid, 1, "Something else?", sampled(5))
    drain(reply)
    assert not reply.stats.cache_hit
    _, state = full_recompute(cobra, image, manager.token_ids(sid))
    assert state_rel_diff(manager.snapshot(sid).state, state) < 1e-5


def test_idle_sessions_expire_and_their_memory_goes_first(cobra):
    now = [0.0]
    manager = SessionManager(cobra, idle_timeout_s=600, clock=lambda: now[0])
    old, fresh = manager.open_session(), manager.open_session()
    manager.set_image(old, sample_image())
    drain(manager.send(old, MESSAGES[0], SamplingParams(max_new_tokens=4)))
    old_keys = stored_keys(manager, old)
    now[0] = 500.0
    drain(manager.send(fresh, MESSAGES[0], SamplingParams(max_new_tokens=4)))
    now[0] = 1000.0  # old: idle 1000 s > 600 s; fresh: idle 500 s
    stats = manager.stats()
    assert stats["sessions"] == 1
    assert_evicted_first(manager.store.memory, old_keys)
    with pytest.raises(SessionNotFound) as err:
        manager.send(old, "Are you there?", SamplingParams(max_new_tokens=4))
    assert err.value.reason == "expired" and "expired after 10 minutes" in err.value.user_message
    assert "new conversation" in err.value.user_message
    assert manager.history(fresh)[0][0] == MESSAGES[0]
    now[0] = 2000.0
    with pytest.raises(SessionNotFound):
        manager.history(fresh)


def test_old_turns_of_a_long_chat_go_before_other_sessions_current_state(cobra):
    state_bytes, logits_bytes, _ = _entry_sizes(cobra, sample_image())
    # room for six states: the other session's (before its reply, and after most of it), the long chat's last two
    # exchanges' (the same two each): the long chat's older states must go first
    manager = SessionManager(cobra, memory_budget_bytes=6 * (state_bytes + logits_bytes) + 500,
                             max_context_tokens=4096)
    long_chat, other = manager.open_session(), manager.open_session()
    drain(manager.send(other, "A question nobody else asks", sampled(0)))  # no state shared with the long chat
    for i in range(8):
        drain(manager.send(long_chat, MESSAGES[i % len(MESSAGES)], sampled(i)))
    assert manager.stats()["evictions"] > 0
    reply = manager.send(other, "And another one", sampled(1))
    drain(reply)
    assert reply.stats.cache_hit and reply.stats.rebuilt_tokens == 0  # its state outlived the long chat's old turns
    reply = manager.edit(long_chat, 1, "An edit of an old message", sampled(9))
    drain(reply)
    assert not reply.stats.cache_hit  # that old boundary had been evicted first, and was rebuilt
    for sid in (long_chat, other):
        _, state = full_recompute(cobra, None, manager.token_ids(sid))
        assert state_rel_diff(manager.snapshot(sid).state, state) < 1e-5
