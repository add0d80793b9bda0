"""The OpenAI-compatible HTTP API: `/v1/chat/completions` and `/v1/models`, next to the page (`python app.py`) or on
its own (`python -m cobra_app serve`).

    schemas       the wire format (pydantic)            conversation  request -> image, turns, sampling settings
    image_urls    data: / http(s) image URLs            replies       reply -> completion or stream chunks
    backend       what computes replies (Protocol)      reference     the full-recompute reference backend
    errors        OpenAI's error shape                  server        the FastAPI app: slots, keys, disconnects
    serve         `python -m cobra_app serve` (uvicorn)
"""

from cobra_app.api.backend import BackendUnavailable, ChatBackend, CompletionStats, ReplyStream
from cobra_app.api.reference import ReferenceBackend
from cobra_app.api.server import ApiSettings, create_api

__all__ = ["ApiSettings", "BackendUnavailable", "ChatBackend", "CompletionStats", "ReferenceBackend", "ReplyStream", "create_api"]
