"""The model deployment: one replica = one loaded model, its session manager and its share of the states.

    chat(ChatRequest)          streams ReplyStarted | ReplyFailed, TokenEvents, ReplyFinished (see `messages`)
    export_state(StateRequest) a state for another replica (through Ray's object store), or None
    score(image, question, answers)   closed-set probe (P(Yes)/P(No)) of a single-turn question
    card()                     the served model's ModelCard (id, info, tokenizer, banner)
    stats()                    where the requests' starting states came from, and the manager's counters

The manager's calls block (they hold the model for a prefill or a decode step), so they run on a thread pool sized
to the replica's `max_ongoing_requests`; the replica's event loop stays free for exports and routing probes.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Protocol

from PIL import Image
from ray import serve

from cobra_app.generation import SamplingParams
from cobra_app.scale.messages import (
    ChatRequest,
    ModelCard,
    ReplyFailed,
    ReplyFinished,
    ReplyStarted,
    StateFound,
    StateRequest,
)
from cobra_app.scale.mobility import DIRECTORY_ACTOR, LocalStates, StateMover
from cobra_app.sessions import SessionError

_END = object()


class ChatModel(LocalStates, Protocol):
    """What a replica serves: the stateless entry point of the session manager, a probe, and its states."""

    def complete(self, image: Image.Image | None, messages: Sequence[tuple[str, str]],
                 params: SamplingParams | None = None, *, top_logprobs: int | None = None) -> Any: ...

    def score(self, image: Image.Image | None, question: str, answers: str = "yes-no") -> dict[str, float]: ...

    def stats(self) -> dict: ...

    def card(self) -> ModelCard: ...


class ModelReplica:
    """A Ray Serve deployment class: `__init__` loads the model once; requests arrive through `ConversationRouter`."""

    def __init__(self, build_model: Callable[[], ChatModel], worker_threads: int):
        self.model = build_model()
        self.replica = serve.get_replica_context().replica_id.unique_id
        self._pool = ThreadPoolExecutor(max_workers=worker_threads, thread_name_prefix="model")
        self.mover = StateMover(self.model, self.replica, peers=self._peers, directory=self._directory)
        self.sources: Counter[str] = Counter()

    @staticmethod
    def _peers():
        context = serve.get_replica_context()
        return serve.get_deployment_handle(context.deployment, context.app_name)

    @staticmethod
    def _directory():
        return serve.get_deployment_actor(DIRECTORY_ACTOR)

    async def _run(self, fn, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self._pool, partial(fn, *args, **kwargs))

    async def chat(self, request: ChatRequest) -> AsyncIterator[object]:
        try:
            keys = await self._run(self.model.request_keys, request.image, request.messages)
            source = await self.mover.bring(request.routing_key, keys)
            reply = await self._run(self.model.complete, request.image, request.messages, request.params,
                                    top_logprobs=request.top_logprobs)
        except SessionError as exc:
            yield ReplyFailed.of(exc)
            return
        self.sources[source] += 1
        try:
            yield ReplyStarted(self.replica, source)
            events = reply.events()
            while (event := await self._run(next, events, _END)) is not _END:
                yield event
        finally:
            await self._run(reply.close)  # a no-op after the end; else stops and saves a reply the client dropped
            await self.mover.record(request.routing_key)
        yield ReplyFinished(reply.stats)  # last, so the request ends as the client sees the reply end

    async def export_state(self, request: StateRequest) -> StateFound | None:
        return self.mover.export(request)

    async def score(self, image: Image.Image | None, question: str, answers: str = "yes-no") -> dict[str, float]:
        return await self._run(self.model.score, image, question, answers)

    async def card(self) -> ModelCard:
        return self.model.card()

    async def stats(self) -> dict:
        return {"replica": self.replica, "state_sources": dict(self.sources), **self.model.stats()}
