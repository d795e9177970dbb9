"""The gateway's HTTP routes (FastAPI): the OpenAI chat completions API, models, health, metrics, the chat page.

Every response carries ``X-Request-Id`` (for a chat completion, the request id the pipeline answers under). Errors
are OpenAI's shape (:func:`workers.gateway.openai_api.error_body`). A chat completion is refused before anything
reaches Kafka when: the API key is missing or wrong (401), the key's rate limit is exceeded (429 with
``Retry-After``), the body is over ``RAG_GATEWAY__MAX_BODY_BYTES`` (413), or it is not JSON or a field is invalid
(400). A streaming request gets Server-Sent Events in OpenAI's chunk format ending ``data: [DONE]``; a client that
goes away (stream or not) cancels its request (a cancel event on the control topic).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from workers.contracts.errors import RetryableError
from workers.contracts.messages import Response as RagResponse
from workers.contracts.messages import TokenEvent
from workers.gateway.assembly import ContradictionError, StreamAssembler
from workers.gateway.limits import ApiKeys, RateLimiter
from workers.gateway.metrics import GatewayMetrics
from workers.gateway.openai_api import (
    BadRequest,
    ChatCompletionRequest,
    chunk,
    completion,
    error_body,
    extension_of,
    now_s,
    parse_body,
    response_error,
    sources_of,
    to_request,
    usage_chunk,
)
from workers.gateway.service import GatewayCore, Waiter
from workers.settings import GatewaySettings

log = logging.getLogger(__name__)

COMPLETIONS = "/v1/chat/completions"


class RequestIdMiddleware:
    """Gives every HTTP request a UUID (``scope["state"]["request_id"]``) and every response ``X-Request-Id``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = uuid.uuid4()
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", str(rid).encode())]}
            await send(message)

        await self.app(scope, receive, send_with_id)


class EventStream(Response):
    """An ASGI response of Server-Sent Events that notices a client going away (``on_disconnect`` is called and the
    event iterator closed) even while no event is due."""

    def __init__(self, events: AsyncIterator[bytes], on_disconnect: Callable[[], None]) -> None:
        super().__init__(status_code=200, media_type="text/event-stream")
        self.events = events
        self.on_disconnect = on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        gone = asyncio.ensure_future(_disconnected(receive))
        it = self.events.__aiter__()
        try:
            while True:
                nxt = asyncio.ensure_future(it.__anext__())
                await asyncio.wait({nxt, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not nxt.done():
                    nxt.cancel()
                    await asyncio.gather(nxt, return_exceptions=True)
                    self.on_disconnect()
                    return
                try:
                    data = nxt.result()
                except StopAsyncIteration:
                    break
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the connection broke while writing
            self.on_disconnect()
        finally:
            gone.cancel()
            await self.events.aclose()  # type: ignore[attr-defined]  # an async generator


async def _disconnected(receive: Receive) -> None:
    """Return when the client disconnects."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def sse(data: dict[str, Any] | str) -> bytes:
    """One Server-Sent Event ``data:`` line."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"data: {text}\n\n".encode()


def oai_error(status: int, message: str, type_: str, *, code: str | None = None, **headers: str) -> JSONResponse:
    """A JSON error response in OpenAI's shape."""
    return JSONResponse(error_body(message, type_, code=code), status_code=status, headers=headers or None)


def chat_page() -> str:
    """The chat page (``workers/gateway/page.html``: plain HTML and JavaScript, no build step)."""
    return resources.files("workers.gateway").joinpath("page.html").read_text(encoding="utf-8")


def create_app(
    settings: GatewaySettings,
    core: GatewayCore,
    keys: ApiKeys,
    limiter: RateLimiter,
    metrics: GatewayMetrics,
    healthy: Callable[[], Awaitable[bool]],
) -> FastAPI:
    """The FastAPI application of one gateway replica (routes: see the module docstring)."""
    app = FastAPI(title="ragstream gateway", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(RequestIdMiddleware)
    page = chat_page()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: HttpRequest, exc: StarletteHTTPException) -> JSONResponse:
        metrics.requests.labels("other", str(exc.status_code)).inc()
        return oai_error(exc.status_code, str(exc.detail), "invalid_request_error")

    def refuse(status: int, reason: str, message: str, type_: str, **headers: str) -> JSONResponse:
        metrics.refused.labels(reason).inc()
        metrics.requests.labels("chat_completions", str(status)).inc()
        return oai_error(status, message, type_, code=reason, **headers)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        ok = await healthy()
        body = {"status": "ok" if ok else "unavailable", "reply_partition": core.partition}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: HttpRequest) -> JSONResponse:
        if keys.identify(request.headers.get("authorization")) is None:
            return oai_error(401, "missing or invalid API key", "invalid_request_error", code="invalid_api_key")
        model = {"id": settings.model, "object": "model", "created": 0, "owned_by": "ragstream"}
        return JSONResponse({"object": "list", "data": [model]})

    @app.post(COMPLETIONS)
    async def chat_completions(request: HttpRequest) -> Any:
        t0 = time.perf_counter()
        rid: uuid.UUID = request.state.request_id
        name = keys.identify(request.headers.get("authorization"))
        if name is None:
            msg = "missing or invalid API key: send it as 'Authorization: Bearer <key>'"
            return refuse(401, "invalid_api_key", msg, "invalid_request_error")
        wait = limiter.take(name)
        if wait > 0:
            log.info("rate limited %s request_id=%s retry_after_s=%.2f", name, rid, wait)
            msg = f"rate limit of {limiter.rate:g} requests/s exceeded; retry after {wait:.2f} s"
            return refuse(429, "rate_limit_exceeded", msg, "rate_limit_error", **{"Retry-After": str(math.ceil(wait))})
        raw = await read_body(request, settings.max_body_bytes)
        if raw is None:
            msg = f"request body larger than {settings.max_body_bytes} bytes"
            return refuse(413, "request_too_large", msg, "invalid_request_error")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return refuse(400, "invalid_json", f"the body is not valid JSON: {exc}", "invalid_request_error")
        try:
            body = parse_body(data)
            req = to_request(
                body,
                request_id=rid,
                reply_partition=core.partition,
                now=datetime.now(UTC),
                timeout_s=settings.timeout_s,
            )
        except BadRequest as exc:
            metrics.refused.labels("invalid_request").inc()
            metrics.requests.labels("chat_completions", "400").inc()
            return JSONResponse(error_body(exc.message, "invalid_request_error", param=exc.param), status_code=400)
        try:
            waiter = await core.submit(req)
        except RetryableError as exc:
            metrics.requests.labels("chat_completions", "503").inc()
            return oai_error(503, f"the broker did not take the request: {exc}", "service_unavailable")
        log.debug("request_id=%s %s stream=%s", rid, name, body.stream)
        metrics.in_flight.inc()
        if body.stream:
            stream = ChatStream(core, waiter, body, settings, metrics, t0)
            return EventStream(stream.events(), stream.client_gone)
        try:
            return await whole_answer(core, waiter, request, settings, metrics, t0)
        finally:
            metrics.in_flight.dec()

    return app


async def read_body(request: HttpRequest, limit: int) -> bytes | None:
    """The request body, or None when it is longer than ``limit`` bytes (stops reading there)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        return None
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            return None
        parts.append(part)
    return b"".join(parts)


async def whole_answer(
    core: GatewayCore,
    waiter: Waiter,
    request: HttpRequest,
    settings: GatewaySettings,
    metrics: GatewayMetrics,
    t0: float,
) -> Any:
    """Wait for the Response (``stream: false``); a client that goes away meanwhile cancels the request."""
    gone = asyncio.ensure_future(_disconnected(request.receive))
    try:
        deadline = time.monotonic() + settings.timeout_s
        while True:
            left = deadline - time.monotonic()
            get = asyncio.ensure_future(waiter.queue.get())
            await asyncio.wait({get, gone}, timeout=max(0.0, left), return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                core.cancel(waiter.request_id, "client disconnected" if gone.done() else "timeout")
                metrics.cancels.inc()
                metrics.requests.labels("chat_completions", "504").inc()
                return oai_error(504, f"no answer within {settings.timeout_s:g} s", "timeout")
            reply = get.result()
            if isinstance(reply, RagResponse):
                break
        metrics.latency.observe(time.perf_counter() - t0)
        if reply.status in ("ok", "no_context"):
            metrics.requests.labels("chat_completions", "200").inc()
            return JSONResponse(completion(reply, settings.model, now_s()))
        status, body = response_error(reply)
        metrics.requests.labels("chat_completions", str(status)).inc()
        return JSONResponse(body, status_code=status)
    finally:
        gone.cancel()
        core.release(waiter)


class ChatStream:
    """One streaming answer: the chunks to send, from the token events and the Response (see
    :class:`~workers.gateway.assembly.StreamAssembler` for how a resumed attempt is checked)."""

    def __init__(
        self,
        core: GatewayCore,
        waiter: Waiter,
        body: ChatCompletionRequest,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        t0: float,
    ) -> None:
        self.core = core
        self.waiter = waiter
        self.body = body
        self.settings = settings
        self.metrics = metrics
        self.t0 = t0
        self.done = False

    def client_gone(self) -> None:
        """The client disconnected: cancel the request unless it was answered."""
        if not self.done:
            self.done = True
            self.core.cancel(self.waiter.request_id)
            self.metrics.cancels.inc()
            self.metrics.requests.labels("chat_completions", "499").inc()
            log.info("client gone, cancelled request_id=%s", self.waiter.request_id)

    async def events(self) -> AsyncIterator[bytes]:
        """The Server-Sent Events of the answer, ending ``data: [DONE]``."""
        rid, model, created = self.waiter.request_id, self.settings.model, now_s()
        asm = StreamAssembler()
        first = True
        deadline = time.monotonic() + self.settings.timeout_s
        try:
            yield sse(chunk(rid, model, created, {"role": "assistant", "content": ""}))
            while True:
                try:
                    reply = await asyncio.wait_for(self.waiter.queue.get(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    self.done = True
                    self.core.cancel(rid, "timeout")
                    self.metrics.cancels.inc()
                    yield self._error(f"no answer within {self.settings.timeout_s:g} s", "timeout", "504")
                    return
                try:
                    text = asm.on_token(reply) if isinstance(reply, TokenEvent) else asm.on_response(reply)
                except ContradictionError as exc:
                    self.metrics.contradictions.inc()
                    log.warning("stream ended request_id=%s: %s", rid, exc)
                    self.done = True
                    yield self._error(str(exc), "stream_contradiction", "502")
                    return
                if text:
                    if first:
                        first = False
                        self.metrics.ttft.observe(time.perf_counter() - self.t0)
                    self.metrics.tokens.inc()
                    yield sse(chunk(rid, model, created, {"content": text}))
                if isinstance(reply, RagResponse):
                    self.done = True
                    for data in self._end(reply, asm):
                        yield data
                    return
        finally:
            self.metrics.in_flight.dec()
            self.core.release(self.waiter)

    def _end(self, resp: RagResponse, asm: StreamAssembler) -> list[bytes]:
        rid, model, created = self.waiter.request_id, self.settings.model, now_s()
        self.metrics.latency.observe(time.perf_counter() - self.t0)
        if asm.resumed:
            self.metrics.resumed.inc()
        if resp.status not in ("ok", "no_context"):
            status, body = response_error(resp)
            self.metrics.requests.labels("chat_completions", str(status)).inc()
            return [sse(body), sse("[DONE]")]
        self.metrics.requests.labels("chat_completions", "200").inc()
        extra = {"sources": sources_of(resp, asm.passages), "ragstream": extension_of(resp)}
        out = [sse(chunk(rid, model, created, {}, resp.finish_reason or "stop", **extra))]
        if self.body.stream_options is not None and self.body.stream_options.include_usage:
            out.append(sse(usage_chunk(rid, model, created, resp)))
        out.append(sse("[DONE]"))
        return out

    def _error(self, message: str, code: str, status: str) -> bytes:
        self.metrics.requests.labels("chat_completions", status).inc()
        return sse(error_body(message, "server_error", code=code)) + sse("[DONE]")
