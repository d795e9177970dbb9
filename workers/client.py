"""Client library: produce Requests, wait for the Response with the same request id.

``RagClient`` keeps one idempotent producer (replaced by a new one if it stalls: a request not delivered within
15 s is produced again, at most 4 times, see :mod:`workers.kafka.resend`) and one consumer on the responses topic.
The consumer does not join a consumer group: it is *assigned* every partition of the responses topic at the high
watermark taken when the client starts, so it sees every response produced afterwards and never steals partitions
from other clients. Responses are matched to waiting callers by request id; a request id is answered once to the
caller (later duplicates, e.g. after a redelivery, are counted and ignored).

Example::

    with RagClient(load_settings()) as client:
        resp = client.ask("What does the pass statement do?", timeout_s=60)
        print(resp.answer)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import KafkaException
from pydantic import ValidationError

from workers.contracts.errors import (
    ConfigError,
    MessageError,
    RequestDeliveryError,
    RequestTimeoutError,
    RequestValidationError,
)
from workers.contracts.messages import GenerationParams, Request, Response
from workers.contracts.serde import decode, encode
from workers.kafka.admin import check_broker
from workers.kafka.producer import KafkaProducer
from workers.kafka.reader import assign_at, consume_available, reader
from workers.kafka.resend import ResendingProducer
from workers.settings import Settings

log = logging.getLogger(__name__)

#: Seconds one delivery attempt of a request may take (the client producer's ``message.timeout.ms``).
DELIVERY_ATTEMPT_S = 15.0
#: Delivery attempts of a request, each on a client that has not stalled (:mod:`workers.kafka.resend`): a request
#: fails with :class:`RequestDeliveryError` after about a minute without a broker.
DELIVERY_ATTEMPTS = 4

#: pydantic error context keys that hold the limit a value broke.
_LIMIT_KEYS = ("max_length", "min_length", "le", "lt", "ge", "gt")


def _too_long(value: object) -> str:
    return f", got {len(value)}" if isinstance(value, str | list | dict) else ""


def build_request(
    query: str,
    *,
    top_k: int | None = None,
    filters: dict[str, str | list[str]] | None = None,
    max_new_tokens: int | None = None,
    deadline_s: float | None = None,
    **generation: Any,
) -> Request:
    """Build a Request (a fresh request id; deadline given in seconds from now), checked against its limits.

    Args:
        query: the question (1 to 20,000 characters).
        top_k: passages to retrieve (1-100; ``None``: the retriever's default).
        filters: metadata filters, e.g. ``{"document_id": ["with", "try"]}``.
        max_new_tokens: upper bound of generated tokens (1-32,768).
        deadline_s: seconds from now after which the request is answered ``expired``.
        **generation: further :class:`GenerationParams` (temperature, top_p, seed, stop).

    Raises:
        RequestValidationError: a value outside its limits; names the field and the limit (e.g. ``query: String
            should have at most 20000 characters (limit 20000, got 2000000)``).
    """
    try:
        params: dict[str, Any] = dict(generation)
        if max_new_tokens:
            params["max_new_tokens"] = max_new_tokens
        gen = GenerationParams.model_validate(params)
        deadline = datetime.now(UTC) + timedelta(seconds=deadline_s) if deadline_s else None
        return Request(query=query, top_k=top_k, filters=filters or {}, generation=gen, deadline=deadline)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "request"
        if exc.title == "GenerationParams":
            where = f"generation.{where}"
        ctx = first.get("ctx") or {}
        limit = next((ctx[k] for k in _LIMIT_KEYS if k in ctx), None)
        detail = f" (limit {limit}{_too_long(first.get('input'))})" if limit is not None else ""
        more = f"; {exc.error_count() - 1} more" if exc.error_count() > 1 else ""
        raise RequestValidationError(
            f"invalid request: {where}: {first['msg']}{detail}{more}", field=where, limit=limit
        ) from None


class RagClient:
    """Request-reply over Kafka, by request id (sync :meth:`ask`, async :meth:`ask_async`).

    Args:
        settings: Kafka and topic settings.
        check: fail fast with :class:`ServiceUnavailableError` when no broker answers.

    Raises:
        ServiceUnavailableError: no broker at ``settings.kafka.bootstrap_servers`` (when ``check``).
    """

    def __init__(self, settings: Settings, *, check: bool = True) -> None:
        self.settings = settings
        if check:
            check_broker(settings.kafka)
        self.requests_topic = settings.topics.name("requests")
        self.responses_topic = settings.topics.name("responses")
        # Each delivery attempt gets DELIVERY_ATTEMPT_S; a request that times out is produced again on a new client
        # (a client can stall after a broker restart: workers.kafka.resend), DELIVERY_ATTEMPTS times in all.
        overrides = {"linger.ms": 0, "message.timeout.ms": int(DELIVERY_ATTEMPT_S * 1000)}
        self._producer = ResendingProducer(
            lambda: KafkaProducer(settings.kafka, overrides=overrides), attempts=DELIVERY_ATTEMPTS
        )
        self._consumer = reader(settings.kafka, "client", **{"fetch.wait.max.ms": 10})
        self._pending: dict[uuid.UUID, concurrent.futures.Future[Response]] = {}
        self._answered: set[uuid.UUID] = set()
        self.duplicates = 0
        self.bad_messages = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._assign_at_end()
        self._thread = threading.Thread(target=self._consume_loop, name="rag-client", daemon=True)
        self._thread.start()

    def _assign_at_end(self) -> None:
        try:
            assign_at(self._consumer, self.responses_topic, "high")
        except ConfigError:
            raise MessageError(
                f"responses topic {self.responses_topic!r} does not exist (run `ragstream topics apply`)"
            ) from None

    def _consume_loop(self) -> None:
        while not self._stop.is_set():
            try:
                msgs = consume_available(self._consumer, 500, 0.05)
                self._producer.poll()  # serve delivery reports: a request that failed delivery fails its caller
            except (KafkaException, RuntimeError) as exc:
                if self._stop.is_set():
                    return
                log.warning("client consume failed: %s", exc)
                continue
            for msg in msgs:
                if msg.error() is not None:
                    continue
                try:
                    resp = decode(msg.value(), Response)
                except MessageError as exc:
                    self.bad_messages += 1
                    log.debug("client skipped a bad response at offset %s: %s", msg.offset(), exc)
                    continue
                with self._lock:
                    fut = self._pending.pop(resp.request_id, None)
                    if fut is None:
                        if resp.request_id in self._answered:
                            self.duplicates += 1
                        continue
                    self._answered.add(resp.request_id)
                if not fut.done():
                    fut.set_result(resp)

    def submit(self, request: Request) -> concurrent.futures.Future[Response]:
        """Produce ``request`` and return a future resolved by its Response.

        The key is the session id when the request has one (per-session order), else the request id.
        """
        fut: concurrent.futures.Future[Response] = concurrent.futures.Future()
        with self._lock:
            self._pending[request.request_id] = fut
        headers: list[tuple[str, str | bytes | None]] = [("request_id", str(request.request_id))]
        if request.deadline is not None:
            headers.append(("deadline", request.deadline.isoformat()))
        headers.append(("traceparent", f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"))
        key = request.session_id or str(request.request_id)

        def on_failed(reason: str) -> None:  # the request never reached Kafka: fail the caller now, not at its timeout
            self._forget(request.request_id)
            if not fut.done():
                fut.set_exception(
                    RequestDeliveryError(
                        f"request {request.request_id} not delivered to {self.requests_topic}: {reason}"
                    )
                )

        try:
            self._producer.send(self.requests_topic, encode(request), key, headers, on_failed)
        except BufferError:  # the local queue stayed full past the producer's bound: the broker is away
            self._forget(request.request_id)
            raise RequestDeliveryError(
                f"request {request.request_id} not queued for {self.requests_topic}: the producer queue stayed full"
            ) from None
        return fut

    def flush(self, timeout_s: float = 10.0) -> int:
        """Wait for produced requests to be delivered; returns how many are still queued."""
        return self._producer.flush(timeout_s)

    def make_request(
        self,
        query: str,
        *,
        top_k: int | None = None,
        filters: dict[str, str | list[str]] | None = None,
        max_new_tokens: int | None = None,
        deadline_s: float | None = None,
        **generation: Any,
    ) -> Request:
        """Build a Request (deadline given in seconds from now); see :func:`build_request`.

        Raises:
            RequestValidationError: a value outside its limits (names the field and the limit).
        """
        return build_request(
            query, top_k=top_k, filters=filters, max_new_tokens=max_new_tokens, deadline_s=deadline_s, **generation
        )

    def ask(self, query: str | Request, timeout_s: float = 60.0, **kwargs: Any) -> Response:
        """Send one question and block until its Response arrives.

        Args:
            query: the question text, or a ready :class:`Request`.
            timeout_s: seconds to wait for the answer.
            **kwargs: passed to :meth:`make_request` (top_k, filters, max_new_tokens, deadline_s, ...).

        Raises:
            RequestValidationError: the question or an option is outside its limits (nothing is sent).
            RequestTimeoutError: no Response for the request id within ``timeout_s``.
        """
        req = query if isinstance(query, Request) else self.make_request(query, **kwargs)
        fut = self.submit(req)
        self.flush()
        try:
            return fut.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            self._forget(req.request_id)
            raise RequestTimeoutError(
                f"no response for request {req.request_id} within {timeout_s:.0f} s "
                f"(are the retriever and generator running? topics {self.requests_topic} → {self.responses_topic})"
            ) from None

    async def ask_async(self, query: str | Request, timeout_s: float = 60.0, **kwargs: Any) -> Response:
        """Async form of :meth:`ask`; many may run concurrently.

        Raises:
            RequestValidationError: the question or an option is outside its limits (nothing is sent).
            RequestTimeoutError: no Response for the request id within ``timeout_s``.
        """
        req = query if isinstance(query, Request) else self.make_request(query, **kwargs)
        fut = self.submit(req)
        await asyncio.get_running_loop().run_in_executor(None, self.flush)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), timeout=timeout_s)
        except TimeoutError:
            self._forget(req.request_id)
            raise RequestTimeoutError(f"no response for request {req.request_id} within {timeout_s:.0f} s") from None

    def ask_many(self, requests: Iterable[Request], timeout_s: float = 120.0) -> dict[uuid.UUID, Response]:
        """Send many requests at once and wait for all answers (by request id).

        Raises:
            RequestTimeoutError: some answers missing after ``timeout_s``; names how many.
        """
        futs = {r.request_id: self.submit(r) for r in requests}
        self.flush()
        done, not_done = concurrent.futures.wait(futs.values(), timeout=timeout_s)
        if not_done:
            raise RequestTimeoutError(f"{len(not_done)} of {len(futs)} requests unanswered after {timeout_s:.0f} s")
        return {rid: f.result() for rid, f in futs.items()}

    def _forget(self, request_id: uuid.UUID) -> None:
        with self._lock:
            self._pending.pop(request_id, None)

    def close(self) -> None:
        """Flush the producer and stop the response consumer."""
        self._stop.set()
        self._producer.flush(5.0)
        self._thread.join(5.0)
        self._consumer.close()

    def __enter__(self) -> RagClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
