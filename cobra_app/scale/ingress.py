"""The ingress deployment: the OpenAI-compatible API (`cobra_app.api`, the very app `python -m cobra_app serve`
serves: same requests, same 400s) over `RayChatBackend`, whose requests the model deployment's router sends to the
replica holding their conversation's state.

`requests()` returns the recent requests' `RequestRecord`s (replica, state source, retries): the figures of
docs/SCALING.md and the tests' evidence.
"""

from __future__ import annotations

import dataclasses

from ray import serve
from starlette.applications import Starlette
from starlette.routing import Mount

from cobra_app.api.configured import API_PREFIX, api_settings
from cobra_app.api.server import create_api
from cobra_app.scale.client import RayChatBackend, RequestRecord
from cobra_app.scale.messages import ModelCard


def api_route(cfg, card: ModelCard, backend: RayChatBackend) -> Mount:
    """The API at /v1 over the model deployment: as many replies at once as all replicas together take."""
    settings = dataclasses.replace(api_settings(cfg, card.model_id), concurrency=cfg.concurrency * cfg.most_replicas)
    return Mount(API_PREFIX, app=create_api(backend, card.tokenizer, settings))


@serve.ingress()
class OpenAIIngress:
    """`__init__` keeps the model deployment's handle; the API is built once the model's card (id, tokenizer) has
    come from a replica."""

    def __init__(self, model, cfg):
        self.model, self.cfg = model, cfg
        self.backend = RayChatBackend(model)

    async def __serve_build_asgi_app__(self) -> Starlette:
        return Starlette(routes=[api_route(self.cfg, await self.model.card.remote(), self.backend)])

    async def requests(self) -> list[RequestRecord]:
        return self.backend.records()
