"""Generator worker wiring: Kafka loop (group "generator") → LLM client → Response.

Consumes Prompts, calls the LLM server through :class:`workers.adapters.llm_server.LLMClient` with a bound on
requests in flight, and produces one Response per prompt to the responses topic (and to the request's
``reply_topic`` when it names another topic). A prompt that cannot be parsed goes to the dead-letter topic;
a permanent LLM failure produces an error Response and a dead letter; retryable failures that exhaust the
retry budget produce a Response with status ``model_unavailable``; a prompt past its deadline is answered
``expired`` without calling the LLM.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from confluent_kafka import Consumer
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from psycopg_pool import AsyncConnectionPool
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from workers.adapters.answers import AnswerStore, PgAnswerStore
from workers.adapters.llm_server import Generation, LLMClient, LLMRetryableError, check_hub_online
from workers.adapters.postgres import open_async_pool
from workers.contracts.errors import MessageError, PermanentError, RetryableError
from workers.contracts.messages import ErrorInfo, Prompt, Response, ResponseStatus, Source, Usage, request_deadline
from workers.contracts.serde import decode, encode
from workers.kafka.admin import check_broker
from workers.kafka.config import consumer_config
from workers.kafka.loop import LoopConfig, WorkerLoop, build_loop_metrics
from workers.kafka.producer import KafkaProducer
from workers.settings import Settings
from workers.stream.records import Incoming, Output, dead_letter, output_headers

log = logging.getLogger(__name__)
T = TypeVar("T")

STAGE = "generator"


class GeneratorMetrics:
    """Generator-specific metrics: LLM latency (TTFT, total), tokens, outcomes, retries."""

    def __init__(self, registry: CollectorRegistry, prefix: str = "ragstream_generator") -> None:
        llm_buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
        self.ttft = Histogram(
            f"{prefix}_llm_ttft_seconds", "Time to first token", buckets=llm_buckets, registry=registry
        )
        self.total = Histogram(
            f"{prefix}_llm_seconds", "LLM call wall time (successful attempt)", buckets=llm_buckets, registry=registry
        )
        self.tokens = Counter(f"{prefix}_completion_tokens", "Generated tokens", registry=registry)
        self.outcomes = Counter(f"{prefix}_responses", "Responses produced by status", ["status"], registry=registry)
        self.retries = Counter(f"{prefix}_llm_retries", "Retried LLM calls by error", ["error"], registry=registry)
        self.errors = Counter(
            f"{prefix}_llm_errors", "Failed requests by error class", ["error_class"], registry=registry
        )
        self.reemitted = Counter(
            f"{prefix}_answers_reemitted", "Redelivered prompts answered from the answer store", registry=registry
        )
        self.expired = Counter(f"{prefix}_expired", "Prompts past their deadline, not generated", registry=registry)
        self.store_errors = Counter(f"{prefix}_answer_store_errors", "Answer store unavailable", registry=registry)


class GeneratorService:
    """The generator's handler: Prompt in, Response (plus dead letters) out.

    Args:
        settings: topic names and LLM settings.
        llm: the LLM client adapter.
        metrics: generator metrics.
        answers: finished answers by request id (effectively-once); ``None`` disables the lookup.
    """

    def __init__(
        self, settings: Settings, llm: LLMClient, metrics: GeneratorMetrics, answers: AnswerStore | None = None
    ) -> None:
        self.settings = settings
        self.llm = llm
        self.metrics = metrics
        self.answers = answers
        #: Request ids being answered by this replica now: a duplicate arriving meanwhile (same prompt twice in
        #: the topic) waits for the first one's Response instead of calling the LLM a second time.
        self._in_progress: dict[uuid.UUID, asyncio.Future[Response]] = {}
        self.responses_topic = settings.topics.name("responses")
        self.dead_letter_topic = settings.topics.name("dead_letter")

    async def handle(self, batch: list[Incoming]) -> Sequence[Sequence[Output]]:
        """Answer each prompt of the batch concurrently; one list of outputs per input."""
        return await asyncio.gather(*(self._one(inc) for inc in batch))

    async def _one(self, inc: Incoming) -> list[Output]:
        t_recv = time.perf_counter()
        try:
            prompt = decode(inc.value, Prompt)
        except MessageError as exc:
            self.metrics.errors.labels(exc.error_class).inc()
            return [dead_letter(inc, topic=self.dead_letter_topic, stage=STAGE, error=exc)]
        running = self._in_progress.get(prompt.request_id)
        if running is not None:  # the same prompt is being answered here right now: wait for that answer
            finished = await asyncio.shield(running)
            self.metrics.reemitted.inc()
            return self._outputs(inc, prompt, finished)
        # registered before the first await, so a duplicate that arrives meanwhile finds it
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._in_progress[prompt.request_id] = fut
        try:
            stored = await self._lookup(prompt)
            if stored is not None:  # redelivered after its answer was produced: re-emit, no LLM call
                self.metrics.reemitted.inc()
                log.info("re-emitting the stored answer request_id=%s status=%s", prompt.request_id, stored.status)
                fut.set_result(stored)
                return self._outputs(inc, prompt, stored)
            resp, extra = await self._answer(inc, prompt, t_recv)
            fut.set_result(resp)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: a waiter re-raises it, nobody logs "never retrieved"
            raise
        finally:
            self._in_progress.pop(prompt.request_id, None)
        return self._outputs(inc, prompt, resp) + extra

    async def _answer(self, inc: Incoming, prompt: Prompt, t_recv: float) -> tuple[Response, list[Output]]:
        """Generate (or expire) the answer of a prompt not answered before; store it; count it."""
        now = datetime.now(UTC)
        timings = dict(prompt.timings_ms)
        timings["generator_queue_ms"] = max(0.0, (now - prompt.created_at).total_seconds() * 1000.0)
        deadline = request_deadline(prompt.request, inc.headers)
        extra: list[Output] = []
        if deadline is not None and now > deadline:
            self.metrics.expired.inc()
            resp = self._response(
                prompt,
                status="expired",
                timings=timings,
                error=ErrorInfo(
                    error_class="expired",
                    message=f"deadline {deadline.isoformat()} passed before generation",
                    stage=STAGE,
                ),
            )
        else:
            try:
                gen = await self.llm.generate(
                    list(prompt.messages),
                    prompt.request.generation.model_copy(update={"max_new_tokens": prompt.max_new_tokens}),
                )
            except LLMRetryableError as exc:
                self.metrics.errors.labels(exc.error_class).inc()
                resp = self._response(
                    prompt,
                    status="model_unavailable",
                    timings=timings,
                    error=ErrorInfo(error_class=exc.error_class, message=str(exc)[:2000], stage=STAGE),
                    attempts=self.settings.llm.max_attempts,
                )
            except PermanentError as exc:
                self.metrics.errors.labels(exc.error_class).inc()
                resp = self._response(
                    prompt,
                    status="error",
                    timings=timings,
                    error=ErrorInfo(error_class=exc.error_class, message=str(exc)[:2000], stage=STAGE),
                )
                extra.append(
                    dead_letter(inc, topic=self.dead_letter_topic, stage=STAGE, error=exc, request_id=prompt.request_id)
                )
            else:
                self.metrics.ttft.observe(gen.ttft_ms / 1000.0)
                self.metrics.total.observe(gen.total_ms / 1000.0)
                self.metrics.tokens.inc(gen.completion_tokens)
                timings["llm_ttft_ms"] = gen.ttft_ms
                timings["llm_total_ms"] = gen.total_ms
                timings["generator_ms"] = (time.perf_counter() - t_recv) * 1000.0
                resp = self._response(prompt, status="ok", timings=timings, generation=gen)
        await self._remember(resp)
        self.metrics.outcomes.labels(resp.status).inc()
        return resp, extra

    async def _lookup(self, prompt: Prompt) -> Response | None:
        if self.answers is None:
            return None
        try:
            return await _with_db_retries(lambda: self.answers.get(prompt.request_id))  # type: ignore[union-attr]
        except RetryableError as exc:  # store away: generate anyway (at-least-once), never block forever
            self.metrics.store_errors.inc()
            log.warning("answer store unavailable, generating without the lookup: %s", exc)
            return None

    async def _remember(self, resp: Response) -> None:
        if self.answers is None:
            return
        try:
            await _with_db_retries(lambda: self.answers.put(resp))  # type: ignore[union-attr]
        except RetryableError as exc:
            self.metrics.store_errors.inc()
            log.warning("answer store unavailable, answer not remembered request_id=%s: %s", resp.request_id, exc)

    def _response(
        self,
        prompt: Prompt,
        *,
        status: ResponseStatus,
        timings: dict[str, float],
        generation: Generation | None = None,
        error: ErrorInfo | None = None,
        attempts: int = 1,
    ) -> Response:
        info = self.llm.server_info
        now = datetime.now(UTC)
        timings["end_to_end_ms"] = max(0.0, (now - prompt.request.created_at).total_seconds() * 1000.0)
        usage = Usage()
        if generation is not None:
            p = generation.prompt_tokens or prompt.prompt_tokens
            usage = Usage(
                prompt_tokens=p,
                completion_tokens=generation.completion_tokens,
                total_tokens=p + generation.completion_tokens,
            )
        return Response(
            request_id=prompt.request_id,
            created_at=now,
            status=status,
            answer=generation.text if generation is not None else None,
            finish_reason=generation.finish_reason if generation is not None else None,
            usage=usage,
            model_id=(generation.model_id if generation is not None and generation.model_id else None)
            or (info.model_id if info else None),
            model_revision=info.model_sha if info else None,
            sources=[Source(document_id=p.document_id, chunk_id=p.chunk_id, score=p.score) for p in prompt.passages],
            timings_ms=timings,
            error=error,
            attempts=generation.attempts if generation is not None else attempts,
            provenance=prompt.provenance.model_copy(
                update={
                    "llm_model_id": info.model_id if info else None,
                    "llm_model_revision": info.model_sha if info else None,
                    "llm_api": self.settings.llm.api,
                    "generation": prompt.request.generation.model_copy(
                        update={"max_new_tokens": prompt.max_new_tokens}
                    ),
                }
            ),
        )

    def _outputs(self, inc: Incoming, prompt: Prompt, resp: Response) -> list[Output]:
        value = encode(resp)
        headers = output_headers(inc, request_id=str(prompt.request_id))
        key = inc.key or str(prompt.request_id)
        outs = [Output(topic=self.responses_topic, value=value, key=key, headers=headers)]
        reply = prompt.request.reply_topic
        if reply and reply != self.responses_topic:
            outs.append(Output(topic=reply, value=value, key=key, headers=headers))
        return outs


async def _with_db_retries(call: Callable[[], Awaitable[T]], attempts: int = 6) -> T:
    """Retry a store call on :class:`RetryableError` with jittered backoff (0.2 s doubling, ~6 s in all)."""
    retrying = AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=wait_random_exponential(multiplier=0.2, max=2.0),
        retry=retry_if_exception_type(RetryableError),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await call()
    raise AssertionError("unreachable")  # pragma: no cover


async def serve(settings: Settings) -> None:
    """Run the generator worker until SIGTERM/SIGINT.

    Raises:
        ServiceUnavailableError: the broker or the LLM server cannot be reached at start-up.
    """
    check_broker(settings.kafka)
    check_hub_online()
    registry = CollectorRegistry()
    metrics = GeneratorMetrics(registry)
    llm = build_llm(settings, metrics)
    info = await llm.info()
    log.info(
        "LLM server model_id=%s max_total_tokens=%s api=%s", info.model_id, info.max_total_tokens, settings.llm.api
    )
    if settings.worker.metrics_port:
        start_http_server(settings.worker.metrics_port, registry=registry)
    answers: AnswerStore | None = None
    pool: AsyncConnectionPool | None = None
    if settings.generator.answer_store:
        pool = await open_async_pool(
            settings.database_url.get_secret_value(), hint="set RAG_DATABASE_URL, or RAG_GENERATOR__ANSWER_STORE=false"
        )
        store = PgAnswerStore(pool, settings.generator.answer_table)
        await store.ensure_schema()
        answers = store
    service = GeneratorService(settings, llm, metrics, answers)
    group = settings.worker.group_id or settings.topics.prefix + "generator"
    consumer = Consumer(consumer_config(settings.kafka, group))
    producer = KafkaProducer(settings.kafka, poll_after_produce=False)
    loop = WorkerLoop(
        LoopConfig(
            role=STAGE,
            topics=[settings.topics.name("prompts")],
            dead_letter_topic=settings.topics.name("dead_letter"),
            max_in_flight=max(settings.worker.max_in_flight, settings.llm.max_in_flight),
            batch_max=1,
            shutdown_timeout_s=settings.worker.shutdown_timeout_s,
        ),
        consumer,
        producer,
        service.handle,
        build_loop_metrics(registry, role=STAGE),
    )
    loop.install_signal_handlers()
    try:
        await loop.run()
    finally:
        await llm.close()
        if pool is not None:
            await pool.close(timeout=2.0)


def build_llm(settings: Settings, metrics: GeneratorMetrics) -> LLMClient:
    """The LLM client of a generator, with retries counted in ``metrics.retries`` by error type."""
    return LLMClient(settings.llm, on_retry=lambda err: metrics.retries.labels(err).inc())
