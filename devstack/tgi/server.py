"""FastAPI app speaking Hugging Face text-generation-inference's HTTP API on top of an :class:`Engine`.

Routes: ``POST /generate``, ``POST /generate_stream`` (server-sent events), ``POST /`` (TGI's compat route),
``POST /v1/chat/completions`` (OpenAI format, streaming or not), ``GET /info``, ``GET /health``,
``POST /tokenize``, ``GET /v1/models``, ``GET /metrics``. Validation, limits, admission and stop sequences
are :mod:`devstack.tgi.generation`'s (shared with the workers' in-process adapter). ``/metrics`` has TGI's
request metrics and the engine's busy time (``engine_busy_seconds_total``, ``engine_generations_total``; see
:mod:`devstack.tgi.busy`). Errors follow TGI: ``{"error": ..., "error_type":
...}`` with 422 "validation", 429 "overloaded", 424/500 "generation"; errors inside a stream are sent as an
event with the same two fields. An engine may add fields to its error bodies (:class:`EngineRejectedError`,
e.g. ``estimated_time`` with 503 "loading") and dev-only routes (:meth:`Engine.admin_router`, e.g. the
simulated engine's ``/admin/*``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from devstack.tgi.busy import BusyClock, register_busy_metrics
from devstack.tgi.engine import Engine, EngineError, EngineRejectedError, FinishEvent, FinishReason, TokenEvent
from devstack.tgi.generation import (
    Admission,
    Prepared,
    Result,
    ServerLimits,
    TGIError,
    begin,
    chat_parameters,
    collect,
    prepare,
    render_chat,
    stop_hit,
    stream,
    validation_error,
)
from devstack.tgi.schemas import ChatRequest, CompatGenerateRequest, GenerateParameters, GenerateRequest

__all__ = ["TGI_VERSION", "ServerLimits", "TGIError", "TGIServer", "create_app"]

logger = logging.getLogger(__name__)

#: TGI version this server imitates (reported in /info and the chat system_fingerprint).
TGI_VERSION = "3.3.6"


class _Metrics:
    """Prometheus metrics of the server (TGI's names, subset)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter("tgi_request_count", "Requests received", registry=registry)
        self.success = Counter("tgi_request_success", "Requests answered", registry=registry)
        self.failures = Counter("tgi_request_failure", "Failed requests", ["err"], registry=registry)
        self.in_flight = Gauge("tgi_queue_size", "Requests in flight", registry=registry)
        self.input_length = Histogram(
            "tgi_request_input_length",
            "Prompt tokens",
            buckets=(16, 64, 256, 512, 1024, 2048, 4096, 8192),
            registry=registry,
        )
        self.generated = Histogram(
            "tgi_request_generated_tokens",
            "Generated tokens",
            buckets=(1, 8, 32, 64, 128, 256, 512, 1024),
            registry=registry,
        )
        self.duration = Histogram(
            "tgi_request_duration",
            "Request duration in seconds",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )


class TGIServer:
    """The request handling shared by all routes.

    Args:
        engine: The text-generation backend (started by the app's lifespan).
        limits: Limits to enforce and report.

    Attributes:
        busy: The engine's busy clock (generations in flight, busy seconds), shown in ``/metrics``.
    """

    def __init__(self, engine: Engine, limits: ServerLimits) -> None:
        self.engine = engine
        self.limits = limits
        self.admission = Admission()
        self.metrics = _Metrics(CollectorRegistry())
        self.busy = BusyClock()
        register_busy_metrics(self.metrics.registry, self.busy)

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet released (counted against ``max_concurrent_requests``)."""
        return self.admission.in_flight

    # -- admission ---------------------------------------------------------------------------------
    def admit(self) -> None:
        """Count one more request in flight.

        Raises:
            TGIError: 429 "overloaded" when ``max_concurrent_requests`` are already in flight.
        """
        self.metrics.requests.inc()
        try:
            self.admission.admit(self.limits.max_concurrent_requests)
        except TGIError:
            self.metrics.failures.labels("overloaded").inc()
            raise
        self.metrics.in_flight.set(self.in_flight)

    def release(self) -> None:
        """One request fewer in flight."""
        self.admission.release()
        self.metrics.in_flight.set(self.in_flight)

    async def begin(self) -> str:
        """Give an arriving generation request its id and show it to the engine (:meth:`Engine.on_request`).

        Returns:
            The request id, to pass to :meth:`prepare`.

        Raises:
            EngineRejectedError: the engine refuses the request.
        """
        return await begin(self.engine)

    def update_limits(self, **changes: int) -> ServerLimits:
        """Change limits at runtime (dev server admin routes), e.g. ``max_concurrent_requests=4``.

        Returns:
            The new limits.

        Raises:
            ValueError: an unknown limit, a value < 1, or ``max_input_tokens >= max_total_tokens``.
        """
        if any(v < 1 for v in changes.values()):
            raise ValueError(f"limits must be >= 1: {changes}")
        try:
            new = replace(self.limits, **changes)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
        if new.max_input_tokens >= new.max_total_tokens:
            raise ValueError("max_input_tokens must be less than max_total_tokens")
        self.limits = new
        logger.info("limits changed %s", " ".join(f"{k}={v}" for k, v in changes.items()))
        return new

    # -- validation --------------------------------------------------------------------------------
    def prepare(
        self, prompt: str, p: GenerateParameters, *, chat: bool = False, request_id: str | None = None
    ) -> Prepared:
        """Validate a request like TGI's validation workers (:func:`devstack.tgi.generation.prepare`).

        Raises:
            TGIError: 422 "validation" for an invalid parameter or a prompt over the token limits.
        """
        return prepare(self.engine, self.limits, prompt, p, chat=chat, request_id=request_id)

    # -- generation --------------------------------------------------------------------------------
    async def events(self, prep: Prepared) -> AsyncGenerator[TokenEvent | FinishEvent, None]:
        """The engine's events with stop sequences applied (:func:`devstack.tgi.generation.stream`), counted in
        the metrics and the busy clock; the last event is always a FinishEvent.

        Raises:
            TGIError: 500 "generation" when the engine fails.
        """
        self.metrics.input_length.observe(prep.input_length)
        count = 0
        try:
            async with contextlib.aclosing(stream(self.engine, prep, self.busy)) as events:
                async for ev in events:
                    if isinstance(ev, FinishEvent):
                        self.metrics.generated.observe(count)
                    else:
                        count += 1
                    yield ev
        except EngineError as exc:
            self.metrics.failures.labels("generation").inc()
            raise TGIError(500, "generation", str(exc)) from exc

    async def run(self, prep: Prepared) -> Result:
        """Generate to the end and collect the result.

        Raises:
            TGIError: 500 "generation" when the engine fails.
        """
        return await collect(self.events(prep))

    def info(self) -> dict[str, Any]:
        """TGI's ``Info`` (plus the fields older TGI versions reported)."""
        ei = self.engine.info()
        lim = self.limits
        return {
            "model_id": ei.model_id,
            "model_sha": ei.model_sha,
            "model_dtype": ei.model_dtype,
            "model_device_type": ei.model_device_type,
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": lim.max_concurrent_requests,
            "max_best_of": lim.max_best_of,
            "max_stop_sequences": lim.max_stop_sequences,
            "max_input_tokens": lim.max_input_tokens,
            "max_input_length": lim.max_input_tokens,
            "max_total_tokens": lim.max_total_tokens,
            "waiting_served_ratio": 1.2,
            "max_batch_total_tokens": lim.max_total_tokens * lim.max_concurrent_requests,
            "max_waiting_tokens": 20,
            "max_batch_size": None,
            "validation_workers": 1,
            "max_client_batch_size": 1,
            "router": "text-generation-router",
            "version": TGI_VERSION,
            "sha": None,
            "docker_label": "ragstream-devstack",
        }


def _token_json(t: TokenEvent) -> dict[str, Any]:
    return {"id": t.id, "text": t.text, "logprob": t.logprob, "special": t.special}


def _sse(obj: Mapping[str, Any]) -> bytes:
    return f"data:{json.dumps(obj, ensure_ascii=False)}\n\n".encode()


def _error_response(exc: TGIError) -> JSONResponse:
    return JSONResponse(status_code=exc.status, content=exc.body())


def create_app(engine: Engine, limits: ServerLimits) -> FastAPI:
    """Build the FastAPI app; the engine is started in the app's lifespan (before serving).

    Args:
        engine: The backend.
        limits: Limits to enforce and report in ``/info``.

    Returns:
        The ASGI app.
    """
    server = TGIServer(engine, limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        t0 = time.monotonic()
        await engine.start()
        info = engine.info()
        if limits.max_total_tokens > info.max_position_embeddings:
            logger.warning(
                "max_total_tokens=%s exceeds the model's max_position_embeddings=%s",
                limits.max_total_tokens,
                info.max_position_embeddings,
            )
        logger.info("engine ready model=%s seconds=%.1f", info.model_id, time.monotonic() - t0)
        yield
        await engine.close()

    app = FastAPI(title="ragstream devstack TGI-compatible server", lifespan=lifespan)
    app.state.server = server

    @app.exception_handler(TGIError)
    async def _tgi_error(request: Request, exc: TGIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(EngineRejectedError)
    async def _rejected(request: Request, exc: EngineRejectedError) -> JSONResponse:
        server.metrics.failures.labels(exc.error_type).inc()
        return JSONResponse(status_code=exc.status, content=exc.body())

    @app.exception_handler(RequestValidationError)
    async def _bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"error": str(exc.errors()), "error_type": "validation"})

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return server.info()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        mid = engine.info().model_id
        return {
            "object": "list",
            "data": [{"id": mid, "object": "model", "created": 0, "owned_by": "ragstream-devstack"}],
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/tokenize")
    async def tokenize(req: GenerateRequest) -> list[dict[str, Any]]:
        return [{"id": s.id, "text": s.text, "start": s.start, "stop": s.stop} for s in engine.tokenize(req.inputs)]

    async def _generate(req: GenerateRequest) -> dict[str, Any]:
        rid = await server.begin()
        prep = server.prepare(req.inputs, req.parameters, request_id=rid)
        server.admit()
        t0 = time.monotonic()
        try:
            res = await server.run(prep)
        finally:
            server.release()
        server.metrics.success.inc()
        server.metrics.duration.observe(time.monotonic() - t0)
        text = (prep.prompt + res.text) if req.parameters.return_full_text else res.text
        body: dict[str, Any] = {"generated_text": text}
        if req.parameters.details:
            body["details"] = {
                "finish_reason": res.finish_reason,
                "generated_tokens": len(res.tokens),
                "seed": res.seed,
                "prefill": [],
                "tokens": [_token_json(t) for t in res.tokens],
                "top_tokens": None,
                "best_of_sequences": None,
            }
        return body

    async def _generate_stream(req: GenerateRequest) -> StreamingResponse:
        rid = await server.begin()
        prep = server.prepare(req.inputs, req.parameters, request_id=rid)
        server.admit()

        async def body() -> AsyncIterator[bytes]:
            t0 = time.monotonic()
            tokens: list[TokenEvent] = []
            text = ""
            pending: TokenEvent | None = None
            try:
                async for ev in server.events(prep):
                    if isinstance(ev, TokenEvent):
                        tokens.append(ev)
                        if not ev.special:
                            text += ev.text
                        last = (
                            ev.special
                            or len(tokens) >= prep.params.max_new_tokens
                            or stop_hit(text, ev.text, prep.stop)
                        )
                        if pending is not None:  # a token we held back was not the last one after all
                            yield _sse({"index": len(tokens) - 1, "token": _token_json(pending),
                                        "top_tokens": None, "generated_text": None, "details": None})  # fmt: skip
                            pending = None
                        if last:
                            pending = ev  # sent with generated_text and details on the finish event
                        else:
                            yield _sse({"index": len(tokens), "token": _token_json(ev), "top_tokens": None,
                                        "generated_text": None, "details": None})  # fmt: skip
                        continue
                    # The last token event carries generated_text (and details), as in TGI.
                    text = "".join(t.text for t in tokens if not t.special)
                    if req.parameters.return_full_text:
                        text = prep.prompt + text
                    details = None
                    if req.parameters.details:
                        details = {
                            "finish_reason": ev.finish_reason,
                            "generated_tokens": len(tokens),
                            "seed": ev.seed,
                            "input_length": prep.input_length,
                        }
                    final = pending or TokenEvent(id=0, text="", logprob=0.0, special=True)
                    yield _sse({"index": len(tokens), "token": _token_json(final), "top_tokens": None,
                                "generated_text": text, "details": details})  # fmt: skip
                server.metrics.success.inc()
                server.metrics.duration.observe(time.monotonic() - t0)
            except TGIError as exc:
                yield _sse(exc.body())
            finally:
                server.release()

        return StreamingResponse(body(), media_type="text/event-stream")

    @app.post("/generate")
    async def generate(req: GenerateRequest) -> dict[str, Any]:
        return await _generate(req)

    @app.post("/generate_stream")
    async def generate_stream(req: GenerateRequest) -> StreamingResponse:
        return await _generate_stream(req)

    @app.post("/", response_model=None)
    async def compat(req: CompatGenerateRequest) -> list[dict[str, Any]] | StreamingResponse:
        if req.stream:
            return await _generate_stream(req)
        return [await _generate(req)]

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatRequest) -> dict[str, Any] | StreamingResponse:
        rid = await server.begin()
        if req.n not in (None, 1):
            raise validation_error("`n` must be 1")
        if req.tools:
            raise validation_error("tools are not supported by this server")
        if req.response_format is not None:
            raise validation_error("response_format (guided generation) is not supported by this server")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        max_new = req.max_completion_tokens or req.max_tokens
        params = chat_parameters(max_new, req.temperature, req.top_p, req.seed, stop)
        prompt = render_chat(engine, [{"role": m.role, "content": m.text()} for m in req.messages])
        prep = server.prepare(prompt, params, chat=True, request_id=rid)
        server.admit()
        model_id = engine.info().model_id
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        fingerprint = f"{TGI_VERSION}-native"

        def openai_reason(r: FinishReason) -> str:
            return "length" if r == "length" else "stop"

        def logprob_json(t: TokenEvent) -> dict[str, Any]:
            return {"token": t.text, "logprob": t.logprob, "top_logprobs": []}

        if not req.stream:
            t0 = time.monotonic()
            try:
                res = await server.run(prep)
            finally:
                server.release()
            server.metrics.success.inc()
            server.metrics.duration.observe(time.monotonic() - t0)
            visible = [t for t in res.tokens if not t.special]
            return {
                "object": "chat.completion",
                "id": cid,
                "created": created,
                "model": model_id,
                "system_fingerprint": fingerprint,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": res.text},
                        "logprobs": {"content": [logprob_json(t) for t in visible]} if req.logprobs else None,
                        "finish_reason": openai_reason(res.finish_reason),
                    }
                ],
                "usage": {
                    "prompt_tokens": prep.input_length,
                    "completion_tokens": len(res.tokens),
                    "total_tokens": prep.input_length + len(res.tokens),
                },
            }

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(delta: dict[str, Any], finish: str | None, logprobs: Any = None) -> dict[str, Any]:
            return {
                "object": "chat.completion.chunk",
                "id": cid,
                "created": created,
                "model": model_id,
                "system_fingerprint": fingerprint,
                "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
                "usage": None,
            }

        async def body() -> AsyncIterator[bytes]:
            t0 = time.monotonic()
            n = 0
            try:
                async for ev in server.events(prep):
                    if isinstance(ev, TokenEvent):
                        n += 1
                        if ev.special or not ev.text:
                            continue
                        lp = {"content": [logprob_json(ev)]} if req.logprobs else None
                        yield _sse(chunk({"role": "assistant", "content": ev.text}, None, lp))
                        continue
                    yield _sse(chunk({"role": "assistant", "content": ""}, openai_reason(ev.finish_reason)))
                    if include_usage:
                        usage = {"prompt_tokens": prep.input_length, "completion_tokens": n,
                                 "total_tokens": prep.input_length + n}  # fmt: skip
                        yield _sse({**chunk({}, None), "choices": [], "usage": usage})
                server.metrics.success.inc()
                server.metrics.duration.observe(time.monotonic() - t0)
                yield b"data: [DONE]\n\n"
            except TGIError as exc:
                yield _sse(exc.body())
            finally:
                server.release()

        return StreamingResponse(body(), media_type="text/event-stream")

    router = engine.admin_router()
    if router is not None:
        app.include_router(router)
    return app
