"""The API's FastAPI app, to mount at /v1: `GET /models`, `GET /models/{id}`, `POST /chat/completions`.

Requests are checked and refused (400) before they take a slot; at most `concurrency` replies are generated at once
(the others wait in arrival order, and beyond `queue_size` waiting ones are turned away with 503). A client that
disconnects, mid-stream or while waiting for a non-streamed reply, has its reply stopped (stored state stays
consistent: the backend's `close()`) and its slot freed at once.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import anyio
from fastapi import Depends, FastAPI, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse

from cobra_app.api.backend import BackendUnavailable, ChatBackend
from cobra_app.api.conversation import ApiLimits, ChatInput, read_request
from cobra_app.api.errors import ApiError, bad_request, from_validation_error
from cobra_app.api.replies import Completion, TokenTexts
from cobra_app.api.schemas import ChatCompletionRequest, ModelList, ModelObject
from cobra_app.sessions import ContextFull, SessionError

log = logging.getLogger(__name__)
BODY_OVERHEAD = 2 * 10**6  # bytes of a request body beside its image (the conversation's text, JSON)


@dataclass(frozen=True)
class ApiSettings:
    model_id: str  # what /v1/models lists and requests must name
    limits: ApiLimits
    max_body_bytes: int  # larger request bodies are refused (an inline image's base64 is 4/3 of the image)
    api_key: str | None = None  # None: no key needed
    concurrency: int = 4
    queue_size: int = 64
    created: int = 0  # unix time the model was loaded (for /v1/models)


class Slots:
    """At most `size` replies at once; up to `queue_size` requests wait for a slot, in arrival order."""

    def __init__(self, size: int, queue_size: int):
        self.size, self.queue_size = size, queue_size
        self._semaphore = asyncio.Semaphore(size)
        self.in_use = 0
        self.waiting = 0

    async def acquire(self) -> Callable[[], None]:
        """Wait for a slot -> its release function (idempotent). ApiError 503 when the queue is full."""
        if self._semaphore.locked() and self.waiting >= self.queue_size:
            raise ApiError(503, f"Cobra is busy: {self.waiting} requests are waiting. Please retry shortly.",
                           type="server_error", code="queue_full", headers={"Retry-After": "1"})
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        self.in_use += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_use -= 1
                self._semaphore.release()

        return release


class _EventStream(StreamingResponse):
    """Server-sent events whose `on_close` runs however the response ends (finished, failed or client gone), even
    when the body iterator never started."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()


def _server_error(exc: Exception, doing: str) -> ApiError:
    """A failure of the backend -> 503 when it says to retry later (`BackendUnavailable`), else 500 (logged)."""
    if isinstance(exc, BackendUnavailable):
        log.warning("%s: backend unavailable: %s", doing, exc)
        return ApiError(503, exc.user_message, type="server_error", code="unavailable", headers={"Retry-After": "1"})
    log.error("%s failed", doing, exc_info=exc)
    return ApiError(500, f"Cobra failed while {doing} (a model error). Please retry.", type="server_error")


def _sse(payload: str) -> str:
    return f"data: {payload}\n\n"


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused when over `limit` bytes (read to its end up to 4x the limit, so that the client
    gets the answer rather than a broken connection)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > 4 * limit:
            break
    if size > limit:
        raise bad_request(f"The request body is {size / 1e6:.1f} MB or more; the limit is {limit / 1e6:.1f} MB (an "
                          "inline image is 4/3 of its file size). Send a smaller image.", code="request_too_large")
    return b"".join(chunks)


async def _unless_disconnected(request: Request, work) -> object | None:
    """Await `work()`; None when the client disconnects first (the work is then cancelled). Its errors propagate."""
    result, error = None, None
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        group.start_soon(watch)
        try:
            result = await work()
        except Exception as exc:  # noqa: BLE001 - raised below as itself, not in the task group's ExceptionGroup
            error = exc
        group.cancel_scope.cancel()
    if error is not None:
        raise error
    return result


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return exc.response()


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own errors (unknown URL, wrong method) in OpenAI's error shape."""
    message = (f"Unknown request URL: {request.method} {request.url.path}." if exc.status_code == 404 else
               f"{request.method} is not allowed on {request.url.path}." if exc.status_code == 405 else
               str(exc.detail))
    return ApiError(exc.status_code, message).response()


def _key_check(api_key: str | None) -> Callable[[Request], None]:
    """A dependency that refuses a request without `Authorization: Bearer <api_key>` (none when no key is set)."""

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "You didn't provide an API key. Send it in an Authorization header using Bearer "
                                "auth (Authorization: Bearer YOUR_KEY).", code="invalid_api_key")
        if not secrets.compare_digest(key.strip().encode(), api_key.encode()):
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    return check_key


def _unknown_model(name: str, served: str) -> ApiError:
    return ApiError(404, f"The model `{name}` does not exist. This server serves `{served}` (GET /v1/models).",
                    param="model", code="model_not_found")


def create_api(backend: ChatBackend, tokenizer, settings: ApiSettings) -> FastAPI:
    """The /v1 app over `backend`. `tokenizer`: the model's, for the log-probabilities' token texts."""
    api = FastAPI(title="Cobra Chat API (OpenAI-compatible)", docs_url=None, redoc_url=None, openapi_url=None)
    slots, texts = Slots(settings.concurrency, settings.queue_size), TokenTexts(tokenizer)
    api.state.slots = slots

    api.add_exception_handler(ApiError, _api_error)
    api.add_exception_handler(HTTPException, _http_error)
    check_key = _key_check(settings.api_key)

    def model_object() -> ModelObject:
        return ModelObject(id=settings.model_id, created=settings.created)

    @api.get("/models", dependencies=[Depends(check_key)])
    async def list_models() -> ModelList:
        return ModelList(data=[model_object()])

    @api.get("/models/{name:path}", dependencies=[Depends(check_key)])
    async def get_model(name: str) -> ModelObject:
        if name != settings.model_id:
            raise _unknown_model(name, settings.model_id)
        return model_object()

    async def start(chat: ChatInput, release: Callable[[], None]) -> Completion:
        try:
            reply = await run_in_threadpool(backend.complete, chat.image, chat.messages, chat.params,
                                            top_logprobs=chat.top_logprobs)
        except SessionError as exc:
            release()
            raise bad_request(exc.user_message, "messages",
                              "context_length_exceeded" if isinstance(exc, ContextFull) else "invalid_value") from exc
        except BaseException as exc:
            release()
            if isinstance(exc, Exception):
                raise _server_error(exc, "starting the reply") from exc
            raise
        return Completion(reply, release, texts, model=settings.model_id, logprobs=chat.top_logprobs is not None)

    @api.post("/chat/completions", dependencies=[Depends(check_key)])
    async def chat_completions(request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            req = ChatCompletionRequest.model_validate_json(await _read_body(request, settings.max_body_bytes))
        except ValidationError as exc:
            raise from_validation_error(exc) from exc
        if req.model != settings.model_id:
            raise _unknown_model(req.model, settings.model_id)
        chat = await run_in_threadpool(read_request, req, settings.limits)
        release = await slots.acquire()
        if await request.is_disconnected():
            release()
            return Response(status_code=499)
        completion = await start(chat, release)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _EventStream(_stream(completion, include_usage, t0), on_close=completion.aclose)
        try:
            result = await _unless_disconnected(request, completion.result)
        except Exception as exc:
            raise _server_error(exc, "answering") from exc
        finally:
            await completion.aclose()
        if result is None:
            log.info("%s: client gone, reply stopped", completion.id)
            return Response(status_code=499)
        _log_done(completion, t0)
        return JSONResponse(result.model_dump())

    return api


async def _stream(completion: Completion, include_usage: bool, t0: float) -> AsyncIterator[str]:
    try:
        async for chunk in completion.chunks(include_usage):
            yield _sse(chunk.model_dump_json())
    except Exception as exc:  # the status line has gone out: the error becomes the stream's last event
        yield _sse(_server_error(exc, "answering").body().model_dump_json())
        return
    finally:
        await completion.aclose()
    _log_done(completion, t0)
    yield _sse("[DONE]")


def _log_done(completion: Completion, t0: float) -> None:
    stats = completion.reply.stats
    log.info("%s: %d prompt tokens (%d cached), %d new, %s, %.2f s", completion.id, stats.prompt_tokens,
             stats.cached_tokens, stats.new_tokens, stats.finish_reason, time.perf_counter() - t0)
