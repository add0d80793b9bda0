"""Ray Serve request routers for the model deployment (set with `request_router_config`; they run inside every
deployment handle, i.e. in the ingress and wherever else the deployment is called from).

`ConversationRouter` sends a request to the replica that holds its conversation's state:
    1. a request naming a `target_replica` (a state export between replicas) goes to that replica if it lives;
    2. otherwise the replica this router last sent the conversation to (its `routing_key`, the conversation's first
       boundary key) holds the conversation's longest boundary; a conversation this router has not seen yet goes to
       its home on a consistent-hash ring of the live replicas, so every router (one per ingress replica) agrees on
       it and adding a replica moves only about 1/(N+1) of the new conversations;
    3. if that replica's queue (requests in progress or waiting there) is over `queue_limit`, or unknown, the
       request goes to the least-loaded replica instead (Serve picks the shortest queue among the ranked set).
The replica that receives a conversation it does not hold fetches the state itself (see `mobility`).

`RandomRouter` picks a replica uniformly at random: the baseline that shows what affinity buys.

Requests are recognised by duck typing, as Ray Serve LLM's PrefixCacheAffinityRouter reads `.messages`: the first
positional argument with a `routing_key` (or `target_replica`) attribute.
"""

from __future__ import annotations

import random
from collections import OrderedDict

from ray.serve.request_router import PendingRequest, ReplicaID, ReplicaResult, RequestRouter, RunningReplica

from cobra_app.scale.hashring import DEFAULT_VIRTUAL_NODES, HashRing

DEFAULT_QUEUE_LIMIT = 4
DEFAULT_REMEMBERED = 100_000  # conversations whose last replica a router remembers (LRU)


def _routed_argument(pending_request: PendingRequest | None) -> object | None:
    if pending_request is None:
        return None
    for arg in pending_request.args:
        if hasattr(arg, "routing_key") or hasattr(arg, "target_replica"):
            return arg
    return None


class _StateRouter(RequestRouter):
    """Sends a state export to its `target_replica` (anywhere if that replica is gone: the receiver then answers that
    it is not the target); every other request is ranked by `rank`."""

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        request = _routed_argument(pending_request)
        if request is None or not candidate_replicas:
            return [candidate_replicas]
        target = getattr(request, "target_replica", None)
        if target is None:
            return await self.rank(candidate_replicas, request.routing_key)
        chosen = [r for r in candidate_replicas if r.replica_id.unique_id == target]
        return [chosen or candidate_replicas]

    async def rank(self, candidate_replicas: list[RunningReplica], routing_key: str) -> list[list[RunningReplica]]:
        raise NotImplementedError


class ConversationRouter(_StateRouter):
    """State affinity by conversation, consistent hashing for new conversations, least-loaded above a queue limit."""

    def initialize_state(self, queue_limit: int = DEFAULT_QUEUE_LIMIT, virtual_nodes: int = DEFAULT_VIRTUAL_NODES,
                         remembered: int = DEFAULT_REMEMBERED) -> None:
        if queue_limit < 0 or remembered < 1:
            raise ValueError(f"queue_limit must be >= 0 and remembered >= 1, got {queue_limit}, {remembered}")
        self.queue_limit = queue_limit
        self.remembered = remembered
        self._ring = HashRing((), virtual_nodes)
        self._last_replica: OrderedDict[str, str] = OrderedDict()  # routing key -> replica unique id

    async def rank(self, candidate_replicas: list[RunningReplica], routing_key: str) -> list[list[RunningReplica]]:
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        preferred = by_id[self.preferred_replica(routing_key, by_id)]
        queue_len = await self._queue_len(preferred)
        if queue_len is None or queue_len > self.queue_limit:
            return [candidate_replicas]
        others = [r for r in candidate_replicas if r is not preferred]
        return [[preferred], others] if others else [[preferred]]

    def preferred_replica(self, routing_key: str, live: dict[str, RunningReplica]) -> str:
        """The live replica that last got this conversation from this router, else its home on the ring."""
        last = self._last_replica.get(routing_key)
        if last in live:
            return last
        self._ring = self._ring.with_nodes(live)
        return self._ring.lookup(routing_key)

    async def _queue_len(self, replica: RunningReplica) -> int | None:
        """The replica's queue length from the router's cache, else probed now (None: it did not answer). Probing
        through `_probe_queue_lens`, as Ray Serve LLM's PrefixCacheAffinityRouter does, also retires dead replicas."""
        if self._use_replica_queue_len_cache:
            cached = self.replica_queue_len_cache.get(replica.replica_id)
            if cached is not None:
                return cached
        [(_, queue_len)] = await self._probe_queue_lens([replica], 0)
        return queue_len

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID,
                          result: ReplicaResult) -> None:
        key = getattr(_routed_argument(pending_request), "routing_key", None)
        if key is None:
            return
        self._last_replica[key] = replica_id.unique_id
        self._last_replica.move_to_end(key)
        while len(self._last_replica) > self.remembered:
            self._last_replica.popitem(last=False)


class RandomRouter(_StateRouter):
    """A uniformly random replica for each request."""

    async def rank(self, candidate_replicas: list[RunningReplica], routing_key: str) -> list[list[RunningReplica]]:
        return [[random.choice(candidate_replicas)]]
