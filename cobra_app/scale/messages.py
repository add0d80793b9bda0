"""What travels between the ingress, the routers and the model replicas: plain picklable values (no Ray import).

A chat request streams back: one `ReplyStarted` (or one `ReplyFailed`, for input the model refuses), the reply's
`TokenEvent`s, then one `ReplyFinished`. A `StateRequest` asks one named replica for the longest of some
boundary states it holds; it answers a `StateFound` or None.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Literal

from PIL import Image

from cobra_app.generation import SamplingParams
from cobra_app.sessions import errors

# Where a request's starting state came from, from cheapest to dearest:
#   memory   the serving replica's own memory (an affinity hit)
#   peer     the replica that held it, through Ray's object store
#   disk     the shared disk tier
#   rebuilt  recomputed from the image and the token ids
#   new      nothing to find: the conversation's first turn
StateSource = Literal["memory", "peer", "disk", "rebuilt", "new"]


@dataclass(frozen=True)
class ChatRequest:
    """One turn: the whole conversation as the client sent it. `routing_key` names the conversation (its first
    boundary) for the router."""

    routing_key: str
    image: Image.Image | None
    messages: tuple[tuple[str, str], ...]
    params: SamplingParams
    top_logprobs: int | None = None


@dataclass(frozen=True)
class StateRequest:
    """Asks `target_replica` (a Serve replica's unique id) for the longest of `keys` (boundary keys, longest first)
    it holds in memory."""

    target_replica: str
    keys: tuple[Hashable, ...]


@dataclass(frozen=True)
class StateFound:
    key: Hashable
    state: Any  # the store's value at `key` (a Snapshot)


@dataclass(frozen=True)
class ModelCard:
    """What the ingress and the UI need to know of the served model."""

    model_id: str
    info: dict
    tokenizer: Any  # the model's tokenizer (the API names the tokens of log-probabilities with it)
    banner: str  # the app's offline-fallback notice ("" when the requested model is served)


@dataclass(frozen=True)
class ReplyStarted:
    replica: str
    state_source: StateSource


@dataclass(frozen=True)
class ReplyFinished:
    stats: Any  # the replica's ReplyStats


@dataclass(frozen=True)
class ReplyFailed:
    """A `SessionError` raised on the replica, carried by name (exceptions do not keep `.user_message` through
    pickling)."""

    error: str
    detail: str
    user_message: str

    @classmethod
    def of(cls, exc: errors.SessionError) -> ReplyFailed:
        return cls(type(exc).__name__, str(exc), exc.user_message)

    def exception(self) -> errors.SessionError:
        error_type = getattr(errors, self.error, None)
        if not (isinstance(error_type, type) and issubclass(error_type, errors.SessionError)):
            error_type = errors.SessionError
        return error_type(self.detail, self.user_message)
