"""`SessionManager.complete` over the model deployment, for the ingress and the UI: the same call, the same errors,
the same streaming reply object, served by whichever replica the router picks.

A replica that dies (or becomes unreachable) before or while it answers costs one retry on another replica, never an
error: the retried request is the same conversation, so its reply is the same (greedy decoding, or sampling with the
seed this client fixes when the caller gave none), and the text already streamed is checked against it and not
streamed twice. A second failure raises `ReplicaUnavailable` (HTTP 503, not 500).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from PIL import Image
from ray.exceptions import RayActorError

from cobra_app.api.backend import BackendUnavailable
from cobra_app.generation import SamplingParams, TokenEvent
from cobra_app.scale.messages import ChatRequest, ReplyFailed, ReplyFinished, ReplyStarted, StateSource
from cobra_app.sessions import image_key

RETRIES = 1
RECORDS = 10_000


class ReplicaUnavailable(BackendUnavailable):
    """Every replica tried for a request died or could not be reached (the API answers 503: retry later)."""

    user_message = "The model server lost a replica and is restarting it. Please try again in a moment."


@dataclass(frozen=True)
class RequestRecord:
    """How one request went: its conversation, its length in messages, the replica that answered, where that
    replica found the conversation's state, the retries it took, and whether its reply ended (not stopped)."""

    routing_key: str
    messages: int
    replica: str
    state_source: StateSource
    retried: int
    finished: bool


def routing_key(image: Image.Image | None, messages: Sequence[tuple[str, str]]) -> str:
    """The conversation's name for the router: its image and first user message (what its first boundary reads)."""
    first_user = next((text for role, text in messages if role == "user"), "")
    h = hashlib.sha256()
    h.update((image_key(image) or "no image").encode())
    h.update(b"\0" + first_user.encode())
    return h.hexdigest()


class RayChatBackend:
    """`complete(image, messages, params, top_logprobs=)` -> `RemoteReply`, through a handle to the model deployment.
    Counts retries per conversation (`retries`) for monitoring."""

    def __init__(self, handle, retries: int = RETRIES, remembered: int = RECORDS):
        self.handle = handle.options(stream=True, method_name="chat")
        self.max_retries = retries
        self.retries: Counter[str] = Counter()
        self._records: deque[RequestRecord] = deque(maxlen=remembered)
        self._lock = threading.Lock()

    def records(self) -> list[RequestRecord]:
        """The most recent requests (`remembered` of them), oldest first."""
        with self._lock:
            return list(self._records)

    def complete(self, image: Image.Image | None, messages: Sequence[tuple[str, str]],
                 params: SamplingParams | None = None, *, top_logprobs: int | None = None) -> RemoteReply:
        params = params or SamplingParams()
        if not params.greedy and params.seed is None:  # a retry must sample the same tokens
            params = replace(params, seed=secrets.randbits(63))
        request = ChatRequest(routing_key(image, messages), image, tuple(messages), params, top_logprobs)
        return RemoteReply(self, request)

    def _count_retry(self, request: ChatRequest) -> None:
        with self._lock:
            self.retries[request.routing_key] += 1

    def _record(self, reply: RemoteReply, finished: bool) -> None:
        request = reply.request
        with self._lock:
            self._records.append(RequestRecord(request.routing_key, len(request.messages), reply.replica,
                                               reply.state_source, reply.retried, finished))


class RemoteReply:
    """A reply being generated on some replica, as the API's `ReplyStream`: `events()` yields its `TokenEvent`s (once),
    `.stats` is set at the end, `close()` stops it (the replica keeps its state consistent). Also `.replica` and
    `.state_source` (of the attempt that answered) and `.retried`. The replica's SessionError is raised here, at
    construction, before any token, as `complete` raises it locally."""

    def __init__(self, backend: RayChatBackend, request: ChatRequest):
        self._backend, self.request = backend, request
        self.stats = None
        self.retried = 0
        self._sent: list[TokenEvent] = []  # events given to the caller
        self._replayed = 0  # events of the current attempt that repeat `_sent` (after a retry)
        self._closed = False
        self._stream = backend.handle.remote(request)
        self._next_item()  # the replica's ReplyStarted, or its SessionError

    def _next_item(self) -> object:
        """The next item of the stream, retrying once on another replica if this one died."""
        while True:
            try:
                item = next(self._stream)
            except RayActorError as exc:
                if self.retried >= self._backend.max_retries:
                    raise ReplicaUnavailable(f"replica lost after {self.retried} retries: {exc}") from exc
                self.retried += 1
                self._backend._count_retry(self.request)
                self._replayed = 0
                self._stream = self._backend.handle.remote(self.request)
                continue
            if isinstance(item, ReplyFailed):
                raise item.exception()
            if isinstance(item, ReplyStarted):
                self.replica, self.state_source = item.replica, item.state_source
            return item

    def events(self) -> Iterator[TokenEvent]:
        while not isinstance(item := self._next_item(), ReplyFinished):
            if isinstance(item, TokenEvent) and self._unseen(item):
                self._sent.append(item)
                yield item
        if self._replayed < len(self._sent):
            raise ReplicaUnavailable("the retried reply is shorter than the one already streamed")
        self.stats = item.stats
        self._drain()
        self._backend._record(self, finished=True)

    def _unseen(self, event: TokenEvent) -> bool:
        """False for an event that a retried attempt repeats from the failed one (it must be the same event)."""
        if self._replayed == len(self._sent):
            self._replayed += 1
            return True
        sent = self._sent[self._replayed]
        if (event.token_id, event.text) != (sent.token_id, sent.text):  # log-probabilities may differ in rounding
            raise ReplicaUnavailable("the retried reply differs from the one already streamed")
        self._replayed += 1
        return False

    def _drain(self) -> None:
        """Wait for the stream's end, so the replica's queue slot is free before the caller's next turn (a replica
        dying now costs nothing: the reply is whole)."""
        try:
            next(self._stream, None)
        except RayActorError:
            pass

    def close(self) -> None:
        """Stop the reply (the replica saves it as stopped, its state consistent); a no-op after the end."""
        if self.stats is None and not self._closed:
            self._closed = True
            self._stream.cancel()
            self._backend._record(self, finished=False)
