"""Routing, state mobility and retries on a real local Ray Serve deployment, with a stand-in model (tests/scale/fakes):
requests go through `RayChatBackend`, the deployment handle and the routers exactly as the ingress sends them."""

import threading

import pytest

pytest.importorskip("ray.serve")

import ray
from ray import serve

from cobra_app.api.backend import BackendUnavailable
from cobra_app.generation import SamplingParams
from cobra_app.scale.application import MODEL_DEPLOYMENT, model_deployment
from cobra_app.scale.client import RayChatBackend, ReplicaUnavailable
from cobra_app.serving.config import AppConfig
from cobra_app.sessions import EmptyMessage
from tests.scale.fakes import CRASH, build_echo_model, expected_reply

CONVERSATIONS, TURNS = 8, 4


def deploy(name: str, *, routing="affinity", queue_limit=8, disk_dir=None, word_delay_s=0.0) -> RayChatBackend:
    """2 replicas; with a queue limit of 8, 8 conversations never overflow a replica (the unit tests cover that)."""
    cfg = AppConfig(replicas=2, num_cpus=0.5, routing=routing, affinity_queue_limit=queue_limit, concurrency=8)
    serve.run(model_deployment(cfg, build_echo_model(disk_dir, word_delay_s)), name=name, route_prefix=None)
    return RayChatBackend(serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=name))


def converse(backend, index: int, turns: int, sources: dict, on_reply=None) -> list[str]:
    """One conversation, resending its whole history each turn as an OpenAI client does."""
    history, replies = [], []
    for turn in range(turns):
        history.append(("user", f"conversation {index} question {turn} about shapes"))
        reply = backend.complete(None, history, SamplingParams())
        if on_reply:
            on_reply(index, turn, reply)
        text = "".join(event.text for event in reply.events())
        sources[(index, turn)] = reply.state_source
        history.append(("assistant", text))
        replies.append(text)
    return replies


def run_conversations(backend, turns=TURNS, on_reply=None) -> tuple[dict, dict]:
    sources, replies = {}, {}

    def one(i):
        replies[i] = converse(backend, i, turns, sources, on_reply)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(CONVERSATIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return sources, replies


def expected(index: int, turns: int) -> list[str]:
    history, out = [], []
    for turn in range(turns):
        history.append(("user", f"conversation {index} question {turn} about shapes"))
        out.append(expected_reply(history))
        history.append(("assistant", out[-1]))
    return out


def follow_up_sources(sources: dict) -> list[str]:
    return [s for (_, turn), s in sorted(sources.items()) if turn > 0]


@pytest.mark.slow
def test_affinity_keeps_every_follow_up_on_the_replica_holding_its_state_and_random_routing_moves_them(ray_cluster):
    affinity = deploy("affinity")
    sources, replies = run_conversations(affinity)
    with pytest.raises(EmptyMessage) as refused:  # the replica's refusal, raised here with its words
        affinity.complete(None, [("user", "   ")])
    serve.delete("affinity")
    random_routing = deploy("random", routing="random")
    random_sources, random_replies = run_conversations(random_routing)
    serve.delete("random")

    assert refused.value.user_message == EmptyMessage.default_user_message
    assert all(replies[i] == expected(i, TURNS) == random_replies[i] for i in range(CONVERSATIONS))
    assert {s for (_, turn), s in sources.items() if turn == 0} == {"new"}
    hits = follow_up_sources(sources).count("memory")
    random_hits = follow_up_sources(random_sources).count("memory")
    print(f"\nfollow-up turns whose state was on the serving replica: affinity {hits}/{len(follow_up_sources(sources))}"
          f", random {random_hits}/{len(follow_up_sources(random_sources))}")
    assert hits == len(follow_up_sources(sources))
    # random routing lands about half the follow-ups away from their state; the holder lives, so it hands it over
    assert set(follow_up_sources(random_sources)) == {"memory", "peer"}


@pytest.mark.slow
def test_a_replica_killed_mid_reply_costs_one_retry_and_its_conversations_go_on_from_the_shared_disk(
        ray_cluster, tmp_path):
    backend = deploy("kill", disk_dir=str(tmp_path), word_delay_s=0.05)
    victim = {}
    lock = threading.Lock()

    def kill_on_third_turn(index, turn, reply):
        with lock:
            if turn == 2 and not victim:
                victim["replica"] = reply.replica
                actor = ray.get_actor(f"SERVE_REPLICA::kill#{MODEL_DEPLOYMENT}#{reply.replica}", namespace="serve")
                ray.kill(actor, no_restart=True)

    sources, replies = run_conversations(backend, on_reply=kill_on_third_turn)
    with pytest.raises(ReplicaUnavailable) as lost:  # a request that kills every replica it reaches: one retry
        backend.complete(None, [("user", CRASH)])
    assert isinstance(lost.value, BackendUnavailable)  # the API's 503 with Retry-After (tests/api/test_server.py)
    serve.delete("kill")

    assert all(replies[i] == expected(i, TURNS) for i in range(CONVERSATIONS))
    assert victim and max(backend.retries.values()) == 1
    # the victim's conversations went on from the states it had written to the shared disk (rebuilds, without a
    # disk tier: tests/scale/test_mobility.py)
    assert set(follow_up_sources(sources)) == {"memory", "disk"}
