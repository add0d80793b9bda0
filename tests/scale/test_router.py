"""The routers' policy, driven directly with stand-in replicas (Serve calls `choose_replicas`, then picks the shortest
queue within the first rank that has a free replica; `on_request_routed` reports where a request went)."""

import asyncio
from dataclasses import dataclass

import pytest

pytest.importorskip("ray.serve")

from ray.serve._private.common import DeploymentHandleSource, DeploymentID
from ray.serve.request_router import PendingRequest, ReplicaID

from cobra_app.scale.hashring import HashRing
from cobra_app.scale.router import ConversationRouter, RandomRouter

DEPLOYMENT = DeploymentID(name="ModelReplica", app_name="cobra")


@dataclass
class StandInReplica:
    """What a router reads of a running replica: its id, its capacity and its queue length."""

    name: str
    queue_len: int = 0
    max_ongoing_requests: int = 16

    @property
    def replica_id(self) -> ReplicaID:
        return ReplicaID(self.name, DEPLOYMENT)

    async def get_queue_len(self, *, deadline_s: float) -> int:
        return self.queue_len


@dataclass(frozen=True)
class Chat:
    routing_key: str


@dataclass(frozen=True)
class Export:
    target_replica: str


def pending(arg) -> PendingRequest:
    return PendingRequest(args=[arg], kwargs={}, metadata=None)


def started(count: int = 2, cls=ConversationRouter, **kwargs):
    """(stand-in replicas r0.., a router of `cls` that knows them); call inside the event loop."""
    replicas = [StandInReplica(f"r{i}") for i in range(count)]
    router = cls(deployment_id=DEPLOYMENT, handle_source=DeploymentHandleSource.UNKNOWN,
                 use_replica_queue_len_cache=True)
    router.initialize_state(**kwargs)
    router.update_replicas(replicas)
    return replicas, router


def names(ranks) -> list[list[str]]:
    return [[r.name for r in rank] for rank in ranks]


def choose(router, replicas, arg):
    return router.choose_replicas(replicas, pending(arg))


def run(coro_fn):
    return asyncio.run(coro_fn())


def test_a_new_conversation_goes_home_on_the_ring_and_then_stays_where_it_was_sent():
    async def scenario():
        replicas, router = started(3, queue_limit=4)
        home = HashRing(["r0", "r1", "r2"]).lookup("conv-a")
        ranks = names(await choose(router, replicas, Chat("conv-a")))
        assert ranks[0] == [home] and sorted(ranks[1]) == sorted({"r0", "r1", "r2"} - {home})
        elsewhere = next(r for r in replicas if r.name != home)
        router.on_request_routed(pending(Chat("conv-a")), elsewhere.replica_id, None)  # e.g. home was full
        assert names(await choose(router, replicas, Chat("conv-a")))[0] == [elsewhere.name]
    run(scenario)


def test_a_preferred_replica_over_the_queue_limit_gives_way_to_the_least_loaded():
    async def scenario():
        replicas, router = started(queue_limit=2)
        await asyncio.sleep(0)  # let the update's background probe fill the queue-length cache
        home = HashRing(["r0", "r1"]).lookup("conv-b")
        for queue_len, expected_first_rank in ((2, [home]), (3, ["r0", "r1"])):
            router.replica_queue_len_cache.update(ReplicaID(home, DEPLOYMENT), queue_len)
            assert names(await choose(router, replicas, Chat("conv-b")))[0] == expected_first_rank
    run(scenario)


def test_an_unknown_queue_length_is_probed():
    async def scenario():
        replicas, router = started(queue_limit=4)
        for replica in replicas:
            replica.queue_len = 9
        router.replica_queue_len_cache.remove_inactive_replicas(active_replica_ids=set())
        assert names(await choose(router, replicas, Chat("conv-c"))) == [["r0", "r1"]]
    run(scenario)


def test_a_conversation_whose_replica_died_goes_to_its_home_among_the_living():
    async def scenario():
        replicas, router = started(3)
        router.on_request_routed(pending(Chat("conv-d")), replicas[0].replica_id, None)
        living = replicas[1:]
        router.update_replicas(living)
        assert names(await choose(router, living, Chat("conv-d")))[0] == [HashRing(["r1", "r2"]).lookup("conv-d")]
    run(scenario)


def test_adding_a_replica_moves_no_known_conversation_and_few_new_ones():
    async def scenario():
        replicas, router = started(4, queue_limit=100)
        known = [f"known-{i}" for i in range(200)]
        before = {}
        for key in known:
            before[key] = names(await choose(router, replicas, Chat(key)))[0][0]
            router.on_request_routed(pending(Chat(key)), ReplicaID(before[key], DEPLOYMENT), None)
        new = [f"new-{i}" for i in range(2000)]
        new_before = [names(await choose(router, replicas, Chat(k)))[0][0] for k in new]
        replicas.append(StandInReplica("r4"))
        router.update_replicas(replicas)
        assert [names(await choose(router, replicas, Chat(k)))[0][0] for k in known] == [before[k] for k in known]
        new_after = [names(await choose(router, replicas, Chat(k)))[0][0] for k in new]
        moved = [a for a, b in zip(new_after, new_before) if a != b]
        assert set(moved) == {"r4"} and 0.12 < len(moved) / len(new) < 0.28
    run(scenario)


def test_an_export_goes_to_its_target_or_anywhere_if_the_target_is_gone():
    async def scenario():
        for cls in (ConversationRouter, RandomRouter):
            replicas, router = started(cls=cls)
            assert names(await choose(router, replicas, Export("r1"))) == [["r1"]]
            assert names(await choose(router, replicas, Export("gone"))) == [["r0", "r1"]]
    run(scenario)


def test_the_remembered_conversations_are_bounded():
    async def scenario():
        replicas, router = started(remembered=3)
        for i in range(5):
            key = f"c{i}"
            elsewhere = "r1" if HashRing(["r0", "r1"]).lookup(key) == "r0" else "r0"
            router.on_request_routed(pending(Chat(key)), ReplicaID(elsewhere, DEPLOYMENT), None)
        remembered = [names(await choose(router, replicas, Chat(f"c{i}")))[0][0] != HashRing(["r0", "r1"]).lookup(
            f"c{i}") for i in range(5)]
        assert remembered == [False, False, True, True, True]  # the two oldest went back to their homes
    run(scenario)


def test_random_routing_spreads_one_conversation_over_every_replica():
    async def scenario():
        replicas, router = started(cls=RandomRouter)
        picks = [names(await choose(router, replicas, Chat("same")))[0][0] for _ in range(200)]
        assert 60 < picks.count("r0") < 140
    run(scenario)
