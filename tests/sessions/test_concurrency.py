"""Many sessions from many threads: 16 threads x 4 sessions with interleaved turns equal single-threaded runs."""

import random
import threading
import time

from cobra_app.sessions import ReplyInProgress, SessionManager
from tests.helpers import sample_image
from tests.sessions.support import (
    MESSAGES,
    ModelWrapper,
    drain,
    measured_bytes,
    sampled,
    session_of,
    state_rel_diff,
)

THREADS, SESSIONS_PER_THREAD, TURNS = 16, 4, 3


def script(thread: int, k: int):
    """What session k of a thread does: its image (4 distinct, shared across sessions) and its turns."""
    image_seed = (thread + k) % 4
    turns = [(MESSAGES[(thread + k + t) % len(MESSAGES)], sampled(seed=1000 * thread + 10 * k + t, max_new_tokens=4))
             for t in range(TURNS)]
    return image_seed, turns


def outcome(manager, sid):
    session = session_of(manager, sid)
    return manager.history(sid), manager.token_ids(sid), [t.generated_ids for t in session.exchanges]


def test_sixteen_threads_four_sessions_each_equal_single_threaded_runs(cobra):
    images = [sample_image(seed=s) for s in range(4)]

    serial = SessionManager(cobra)
    expected = {}
    for thread in range(THREADS):
        for k in range(SESSIONS_PER_THREAD):
            image_seed, turns = script(thread, k)
            sid = serial.open_session()
            serial.set_image(sid, images[image_seed])
            for message, params in turns:
                drain(serial.send(sid, message, params))
            expected[thread, k] = (outcome(serial, sid), serial.snapshot(sid).state)

    manager = SessionManager(cobra)
    results, errors = {}, []
    start = threading.Barrier(THREADS)

    def worker(thread: int):
        try:
            rng = random.Random(thread)
            sids = [manager.open_session() for _ in range(SESSIONS_PER_THREAD)]
            scripts = [script(thread, k) for k in range(SESSIONS_PER_THREAD)]
            start.wait()
            for sid, (image_seed, _) in zip(sids, scripts):
                manager.set_image(sid, images[image_seed])
            for t in range(TURNS):  # interleave this thread's sessions: start all replies, then read them in turns
                replies = [manager.send(sid, *scripts[k][1][t]) for k, sid in enumerate(sids)]
                live = list(range(SESSIONS_PER_THREAD))
                while live:
                    k = rng.choice(live)
                    if next(replies[k], None) is None:
                        live.remove(k)
            for k, sid in enumerate(sids):
                results[thread, k] = (outcome(manager, sid), manager.snapshot(sid).state)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(300)
    assert not errors, errors
    assert not any(th.is_alive() for th in threads)
    assert results.keys() == expected.keys()
    for key, (got, state) in results.items():
        want, want_state = expected[key]
        assert got == want, key
        assert state_rel_diff(state, want_state) < 1e-6, key
    stats = manager.stats()
    assert stats["sessions"] == THREADS * SESSIONS_PER_THREAD and stats["replies_in_flight"] == 0
    assert stats["image_encodes"] == 4  # each distinct image encoded once, however many threads wanted it


def test_concurrent_sends_to_one_session_let_exactly_one_through(cobra):
    manager = SessionManager(cobra)
    sid = manager.open_session()
    barrier, outcomes = threading.Barrier(8), []

    def attempt(i):
        barrier.wait()
        try:
            reply = manager.send(sid, f"Message {i}", sampled(i))
            outcomes.append(("ok", reply))
        except ReplyInProgress:
            outcomes.append(("busy", None))

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    ok = [r for kind, r in outcomes if kind == "ok"]
    assert len(outcomes) == 8 and len(ok) == 1
    drain(ok[0])
    assert len(manager.history(sid)) == 1


def test_threads_under_a_tight_budget_rebuild_correctly_and_stay_under_it(cobra):
    """Concurrency and eviction together: every conversation still equals its full recompute, and a monitor
    sampling the store while the threads run never sees more bytes than the budget."""
    from tests.sessions.support import full_recompute

    images = [sample_image(seed=s) for s in range(2)]
    budget = 3 * cobra.vlm.llm.initial_state().nbytes
    manager = SessionManager(cobra, memory_budget_bytes=budget)
    done, seen, errors, finished = threading.Event(), [], [], {}

    def monitor():
        while not done.is_set():
            seen.append(max(manager.store.memory.bytes_in_use, measured_bytes(manager.store.memory)))
            time.sleep(0.002)

    def worker(thread):
        try:
            sids = [manager.open_session() for _ in range(2)]
            for k, sid in enumerate(sids):
                manager.set_image(sid, images[(thread + k) % 2])
            for t in range(3):
                for k, sid in enumerate(sids):
                    drain(manager.send(sid, MESSAGES[(thread + t) % len(MESSAGES)], sampled(thread * 10 + t, 4)))
            for k, sid in enumerate(sids):
                finished[sid] = ((thread + k) % 2, manager.token_ids(sid), manager.snapshot(sid).state)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    watcher = threading.Thread(target=monitor)
    watcher.start()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(300)
    done.set()
    watcher.join(30)
    assert not errors, errors
    assert len(finished) == 16 and seen and max(seen) <= budget
    assert manager.stats()["rebuilds"] > 0 and manager.stats()["evictions"] > 0
    for image_index, ids, state in finished.values():
        _, full_state = full_recompute(cobra, images[image_index], ids)
        assert state_rel_diff(state, full_state) < 1e-5


class SlowSteps(ModelWrapper):
    def step(self, input_ids, state):
        time.sleep(0.01)
        return self.model.step(input_ids, state)


def test_replies_generating_together_share_decode_steps(cobra):
    """Decode steps of concurrent replies are batched (one pass over the weights for several sessions), and each
    conversation still equals its own single-threaded run."""
    images = [sample_image(seed=s) for s in range(4)]
    params = sampled(seed=5, max_new_tokens=12)

    def run(manager, sid, i):
        manager.set_image(sid, images[i])
        drain(manager.send(sid, MESSAGES[i], params))

    serial = SessionManager(cobra)
    expected = []
    for i in range(4):
        sid = serial.open_session()
        run(serial, sid, i)
        expected.append((outcome(serial, sid), serial.snapshot(sid).state))

    manager = SessionManager(SlowSteps(cobra), max_batch=4)  # steps take long enough for concurrent ones to queue
    sids = [manager.open_session() for _ in range(4)]
    threads = [threading.Thread(target=run, args=(manager, sid, i)) for i, sid in enumerate(sids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = manager.stats()
    assert stats["decoded_tokens"] > stats["decode_steps"]  # some steps served several sessions
    for sid, (want, want_state) in zip(sids, expected):
        assert outcome(manager, sid) == want
        assert state_rel_diff(manager.snapshot(sid).state, want_state) <= 1e-5
