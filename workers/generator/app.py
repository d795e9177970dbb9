"""Generator worker wiring: Kafka loop (group "generator") → stream runner → generator stage → Responses.

The only module that builds the generator's clients: the LLM (the HTTP client of a TGI-compatible server by
default; an engine hosted in this process when ``RAG_LLM__ENGINE`` names one) and the answer store's
PostgreSQL pool. The stage (:mod:`workers.generator.stage`) gets the LLM through its constructor; the runner
(:mod:`workers.stream.runner`) decodes Prompts, re-emits answers already given (effectively-once), answers
expired prompts without an LLM call, produces the Response (and the request's reply copy) and dead-letters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import CollectorRegistry

from workers.adapters.answers import PgAnswerStore
from workers.adapters.interfaces import LLM, AnswerStore
from workers.adapters.postgres import open_async_pool
from workers.contracts.messages import CancelEvent, Prompt, Request
from workers.generator.cancels import Cancellations
from workers.generator.metrics import GeneratorMetrics
from workers.generator.stage import STAGE, GeneratorStage
from workers.generator.tokens import BatchingTokenSink
from workers.kafka.admin import check_broker
from workers.kafka.loop import serve_handler
from workers.kafka.streams import ControlReader, KafkaTokenPublisher
from workers.ports import start_metrics_server
from workers.retry import retry_policies
from workers.settings import Settings
from workers.stream.metrics import RunnerMetrics, build_runner_metrics
from workers.stream.runner import EventRecorder, Routes, Stage, StreamRunner, dead_letter_errors

log = logging.getLogger(__name__)


def build_llm(settings: Settings, metrics: GeneratorMetrics) -> LLM:
    """The LLM the settings ask for: an engine in this process (``llm.engine``) or the HTTP server at ``llm.url``.

    Retried generations are counted in ``metrics.retries`` by error type; an in-process engine adds its busy
    counters (``engine_busy_seconds_total``, ``engine_generations_total``) to ``metrics.registry``.

    Raises:
        ConfigError: ``HF_HUB_OFFLINE`` is set (it would refuse every HTTP call), or the engine cannot be built.
    """
    if settings.llm.engine:
        from workers.adapters.llm_engine import EngineLLM

        return EngineLLM.from_settings(
            settings.llm, metrics.registry, on_retry=lambda err: metrics.retries.labels(err).inc()
        )
    from workers.adapters.llm_server import LLMServerClient, check_hub_online

    check_hub_online()
    return LLMServerClient(
        settings.llm,
        on_retry=lambda err: metrics.retries.labels(err).inc(),
        retry=retry_policies(settings).llm,
    )


async def open_answer_store(settings: Settings, resources: contextlib.AsyncExitStack) -> AnswerStore | None:
    """The answer store the settings ask for (``generator.answer_store``), its table created; ``None`` when off.

    Raises:
        ServiceUnavailableError: PostgreSQL cannot be reached.
    """
    if not settings.generator.answer_store:
        return None
    pool = await open_async_pool(
        settings.database_url.get_secret_value(), hint="set RAG_DATABASE_URL, or RAG_GENERATOR__ANSWER_STORE=false"
    )
    resources.push_async_callback(pool.close, 2.0)
    store = PgAnswerStore(pool, settings.generator.answer_table)
    await store.ensure_schema()
    return store


def build_stage(
    settings: Settings, llm: LLM, metrics: GeneratorMetrics, resources: contextlib.AsyncExitStack
) -> GeneratorStage:
    """The generator stage with its token stream (a Kafka publisher to the tokens topic, batching per the
    ``generator.token_batch_*`` settings) and, with ``generator.cancels``, the cancels read from the control topic.

    Call it on the running event loop: cancels are handed to it from the control reader's thread.
    """
    publisher = KafkaTokenPublisher(settings.kafka, settings.topics.name("tokens"))
    resources.callback(publisher.close)
    sink = BatchingTokenSink(publisher, settings.generator.token_batch_max, settings.generator.token_batch_ms)
    cancels: Cancellations | None = None
    if settings.generator.cancels:
        watch = Cancellations()
        loop = asyncio.get_running_loop()

        def on_cancel(event: CancelEvent) -> None:
            log.info("cancel request_id=%s reason=%s", event.request_id, event.reason)
            loop.call_soon_threadsafe(watch.cancel, event.request_id)

        control = ControlReader(settings.kafka, settings.topics.name("control"), on_cancel)
        if control.start():
            cancels = watch
        resources.callback(control.stop)
    return GeneratorStage(llm, metrics, settings.generator.attribution_threshold, tokens=sink, cancels=cancels)


def build_runner(
    settings: Settings,
    stages: list[Stage],
    answers: AnswerStore | None,
    registry: CollectorRegistry | None = None,
    *,
    input_model: type[Prompt] | type[Request] = Prompt,
    recorder: EventRecorder | None = None,
    prefix: str = "ragstream_generator",
    metrics: RunnerMetrics | None = None,
) -> StreamRunner:
    """A runner that ends in the generator stage: effectively-once with ``answers``, dead letters on failure.

    Args:
        settings: topics, retry policies.
        stages: the chain (the generator alone, or the monolith's retriever → generator).
        answers: the answer store (``None``: no lookup, nothing remembered).
        registry: where the runner's metrics go.
        input_model: ``Prompt`` by default; the monolith passes ``Request``.
        recorder: the in-process monitor stage (monolith), if any.
        prefix: metric name prefix.
        metrics: the runner's metrics when the caller keeps them across runners (default: new, in ``registry``).
    """
    policies = retry_policies(settings)
    return StreamRunner(
        stages,
        input_model=input_model,
        routes=Routes.from_settings(settings),
        retry=policies.handler,
        on_error=dead_letter_errors,
        answers=answers,
        store_retry=policies.store,
        recorder=recorder,
        metrics=metrics or build_runner_metrics(registry, prefix=prefix),
    )


async def serve(settings: Settings) -> None:
    """Run the generator worker until SIGTERM/SIGINT.

    Raises:
        ConfigError: the metrics port is in use (checked first, before the broker and the model).
        ServiceUnavailableError: the broker, the LLM server or PostgreSQL cannot be reached at start-up.
    """
    registry = CollectorRegistry()
    server = start_metrics_server(settings.worker.metrics_port, registry, setting="RAG_WORKER__METRICS_PORT")
    check_broker(settings.kafka)
    metrics = GeneratorMetrics(registry)
    async with contextlib.AsyncExitStack() as resources:
        if server is not None:
            resources.callback(server.close)
        llm = build_llm(settings, metrics)
        resources.push_async_callback(llm.close)
        info = await llm.info()
        log.info("LLM model_id=%s max_total_tokens=%s api=%s", info.model_id, info.max_total_tokens, llm.api)
        answers = await open_answer_store(settings, resources)
        runner = build_runner(settings, [build_stage(settings, llm, metrics, resources)], answers, registry)
        await serve_handler(
            settings,
            runner,
            role=STAGE,
            topics=[settings.topics.name("prompts")],
            max_in_flight=max(settings.worker.max_in_flight, settings.llm.max_in_flight),
            batch_max=1,
            registry=registry,
        )


__all__ = ["build_llm", "build_runner", "build_stage", "open_answer_store", "serve"]
