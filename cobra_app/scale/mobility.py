"""State mobility: a replica that gets a conversation it does not hold takes the state from where it is.

Lookup order for a request's longest boundary state (`StateMover.bring`):
    1. the replica's own memory (an affinity hit: nothing moves);
    2. the replica that last stored the conversation (`StateDirectory`, a deployment-scoped actor), asked through the
       deployment handle with a `StateRequest` that the router delivers to exactly that replica; the state comes back
       through Ray's object store. A dead, slow or forgetful holder is a miss, never an error;
    3. the shared disk tier (the session manager reads it itself);
    4. otherwise the session manager rebuilds the state exactly from the image and the token ids.
Keys are content addresses (model, image, token ids), so a state found anywhere is the right one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from cobra_app.scale.messages import StateFound, StateRequest, StateSource

log = logging.getLogger(__name__)

DIRECTORY_ACTOR = "state_directory"
DEFAULT_DIRECTORY_CAPACITY = 1_000_000  # conversations remembered (about 100 bytes each)
DEFAULT_FETCH_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RequestKeys:
    """A request's boundary keys, longest first (the first is after its whole prompt), and the index of the first
    key whose state its conversation's previous turn stored (None for a first turn): a state there or longer means
    nothing had to move."""

    keys: tuple[Hashable, ...]
    resume: int | None


class LocalStates(Protocol):
    """What mobility needs of a replica's state store."""

    def request_keys(self, image: Image.Image | None, messages: Sequence[tuple[str, str]]) -> RequestKeys: ...

    def longest_in_memory(self, keys: Sequence[Hashable]) -> int | None:
        """Index of the first of `keys` held in memory, or None."""

    def longest_on_disk(self, keys: Sequence[Hashable]) -> int | None:
        """Index of the first of `keys` held in the (shared) disk tier, or None."""

    def export(self, keys: Sequence[Hashable]) -> StateFound | None:
        """The longest of `keys` held in memory, with its state (on the CPU: it leaves the process)."""

    def adopt(self, found: StateFound) -> None:
        """Put a state taken from another replica into memory."""


class StateDirectory:
    """routing key -> the replica that last stored that conversation's state (LRU, bounded). Only a hint: a stale
    entry costs one failed lookup."""

    def __init__(self, capacity: int = DEFAULT_DIRECTORY_CAPACITY):
        self.capacity = capacity
        self._holders: OrderedDict[str, str] = OrderedDict()

    def record(self, routing_key: str, replica: str) -> None:
        self._holders[routing_key] = replica
        self._holders.move_to_end(routing_key)
        while len(self._holders) > self.capacity:
            self._holders.popitem(last=False)

    def holder(self, routing_key: str) -> str | None:
        return self._holders.get(routing_key)

    def __len__(self) -> int:
        return len(self._holders)


class StateMover:
    """One replica's side of mobility: `bring` a request's state here, `export` states to the others.

    peers, directory: functions that get the model deployment's handle (for `export_state` calls) and the
    `StateDirectory` actor's handle; each is called once and again after a call through it failed (Serve recreates a
    failed deployment-scoped actor, and a handle to the old one stays dead)."""

    def __init__(self, states: LocalStates, replica: str, peers: Callable[[], object], directory: Callable[[], object],
                 fetch_timeout_s: float = DEFAULT_FETCH_TIMEOUT_S):
        self.states, self.replica = states, replica
        self._get_peers, self._get_directory = peers, directory
        self._handles: dict[str, object] = {}
        self.fetch_timeout_s = fetch_timeout_s

    def _handle(self, name: str):
        if name not in self._handles:
            self._handles[name] = (self._get_peers if name == "peers" else self._get_directory)()
        return self._handles[name]

    async def bring(self, routing_key: str, request: RequestKeys) -> StateSource:
        """Make the request's longest known boundary available here; say where it came from."""
        if request.resume is None:
            return "new"
        keys = request.keys
        in_memory = self.states.longest_in_memory(keys)
        if in_memory is not None and in_memory <= request.resume:
            return "memory"
        found = await self._from_holder(routing_key, keys[:in_memory] if in_memory is not None else keys)
        if found is not None:
            self.states.adopt(found)
            return "peer"
        on_disk = self.states.longest_on_disk(keys)
        if on_disk is not None and on_disk <= request.resume:
            return "disk"
        return "rebuilt"

    async def _from_holder(self, routing_key: str, keys: Sequence[Hashable]) -> StateFound | None:
        try:
            holder = await self._handle("directory").holder.remote(routing_key)
        except Exception as exc:  # noqa: BLE001 - a restarting directory: a miss, not an error
            self._handles.pop("directory", None)
            log.info("holder of %s unknown: %s", routing_key[:12], exc)
            return None
        if holder is None or holder == self.replica:
            return None
        try:
            request = StateRequest(holder, tuple(keys))
            return await asyncio.wait_for(self._handle("peers").export_state.remote(request), self.fetch_timeout_s)
        except Exception as exc:  # noqa: BLE001 - a dead or slow holder: a miss, not an error
            log.info("state of %s not taken from %s: %s", routing_key[:12], holder, exc)
            return None

    def export(self, request: StateRequest) -> StateFound | None:
        """Answer a peer: the longest of the requested states held here (None if this is not the target)."""
        if request.target_replica != self.replica:
            return None
        return self.states.export(request.keys)

    async def record(self, routing_key: str) -> None:
        """Tell the directory that this replica now holds the conversation's latest state."""
        try:
            await self._handle("directory").record.remote(routing_key, self.replica)
        except Exception as exc:  # noqa: BLE001 - the directory is a hint: a lost record costs one fetch later
            self._handles.pop("directory", None)
            log.info("holder of %s not recorded: %s", routing_key[:12], exc)
