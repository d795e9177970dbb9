"""Retriever worker wiring: Kafka loop (group "retriever") → stream runner → retriever stage → Prompts.

The only module that builds the retriever's clients: the embedding model, the pgvector pool, the LLM server
client (for the token limits and, without a local tokenizer, the server's token counts; both discovered). The stage
(:mod:`workers.retriever.stage`) gets them through its constructor; the runner (:mod:`workers.stream.runner`)
decodes Requests, answers expired ones, produces Prompts and dead-letters what cannot be served.
"""

from __future__ import annotations

import contextlib
import logging

from prometheus_client import CollectorRegistry

from workers.adapters.embedding import Embedder
from workers.adapters.interfaces import LLMTokenCounter, ServerInfo
from workers.adapters.llm_server import LLMServerClient
from workers.adapters.pgvector import VectorStore
from workers.adapters.postgres import open_pool
from workers.adapters.tokenizers import CachedTokenCounter, LocalTokenizerCounter
from workers.contracts.messages import Request
from workers.kafka.admin import check_broker
from workers.kafka.loop import serve_handler
from workers.ports import start_metrics_server
from workers.retriever.metrics import RetrieverMetrics
from workers.retriever.stage import STAGE, RetrieverStage
from workers.retry import retry_policies
from workers.settings import Settings
from workers.stream.metrics import build_runner_metrics
from workers.stream.runner import Routes, StreamRunner, dead_letter_errors

log = logging.getLogger(__name__)


def build_stage(
    settings: Settings,
    registry: CollectorRegistry,
    resources: contextlib.ExitStack,
    *,
    limits: ServerInfo | None = None,
    counter: LLMTokenCounter | None = None,
) -> RetrieverStage:
    """Create the retriever's clients (model, pool, LLM server client) and check them before consuming.

    Args:
        settings: the process's settings.
        registry: where the stage's metrics go.
        resources: closes what was opened here (model, pool, HTTP client) when the caller exits it.
        limits: the LLM's token limits when the caller has them (the monolith asks its own LLM); default: what
            the server says (``/info``, ``/v1/models``, ``/props``) or ``llm.max_*_tokens``, discovered once.
        counter: counts prompt tokens in the LLM's tokenizer when the caller has one (the monolith's LLM);
            default: the local tokenizer of ``llm.tokenizer`` (or ``retriever.llm_tokenizer``), else the server's
            tokenize route (discovered). Where limits and counts come from is logged once.

    Raises:
        ServiceUnavailableError: PostgreSQL or the LLM server cannot be reached.
        ConfigError: no tokenizer is set and the server has no tokenize route.
        DimensionMismatchError: the vector table's dimension differs from the model's.
    """
    embedder = Embedder.from_settings(settings.embedding)
    resources.callback(embedder.close)
    pool = open_pool(settings.database_url.get_secret_value(), min_size=1, max_size=4, vector=True)
    resources.callback(pool.close)
    store = VectorStore.from_settings(pool, settings.retriever, embedder.dimension)
    store.ensure_schema(embedder.model_name)  # idempotent; raises DimensionMismatchError on a wrong column
    limits_source = "the LLM adapter"
    tokenizer = settings.llm.tokenizer or settings.retriever.llm_tokenizer
    if tokenizer:
        counter = LocalTokenizerCounter(tokenizer)
    if limits is None or counter is None:
        server = LLMServerClient(settings.llm)
        resources.callback(server.close_sync)
        if limits is None:
            limits = server.fetch_info()
            caps = server.capabilities
            limits_source = caps.limits_source if caps is not None else "the LLM server"
        counter = counter or server
    if limits.max_total_tokens is None:
        limits_source = (
            f"retriever.default_max_total_tokens={settings.retriever.default_max_total_tokens} (the LLM server says "
            "no limits; set RAG_LLM__MAX_TOTAL_TOKENS to the server's context length)"
        )
    count_source = _count_source(counter)
    stage = RetrieverStage(
        settings.retriever,
        embedder,
        store,
        CachedTokenCounter(counter, settings.retriever.token_cache_entries),
        limits,
        RetrieverMetrics(registry),
        chunk_tokens=settings.embedding.chunk_tokens,
    )
    log.info(
        "retriever llm limits max_input_tokens=%s max_total_tokens=%s from %s; prompt tokens counted by %s",
        stage.limits.max_input_tokens,
        stage.limits.max_total_tokens,
        limits_source,
        count_source,
    )
    log.info(
        "retriever ready model=%s dim=%d table=%s rows=%d llm=%s max_total_tokens=%s",
        embedder.model_name,
        embedder.dimension,
        settings.retriever.table,
        stage.index_rows,
        stage.limits.model_id,
        stage.limits.max_total_tokens,
    )
    return stage


def _count_source(counter: LLMTokenCounter) -> str:
    """Where prompt tokens are counted, for the start-up log; discovers the server's tokenize route if needed.

    Raises:
        ConfigError: the counter is the LLM server and it has no tokenize route (set ``RAG_LLM__TOKENIZER``).
    """
    if isinstance(counter, LocalTokenizerCounter):
        return f"the local tokenizer {counter.source}"
    if isinstance(counter, LLMServerClient):
        return counter.tokenize_source
    return type(counter).__name__


def build_runner(settings: Settings, stage: RetrieverStage, registry: CollectorRegistry | None = None) -> StreamRunner:
    """The retriever's stream runner: Requests in, Prompts (or error answers and dead letters) out."""
    return StreamRunner(
        [stage],
        input_model=Request,
        routes=Routes.from_settings(settings),
        retry=retry_policies(settings).handler,
        on_error=dead_letter_errors,
        metrics=build_runner_metrics(registry, prefix="ragstream_retriever"),
    )


async def serve(settings: Settings) -> None:
    """Run the retriever worker until SIGTERM/SIGINT.

    Raises:
        ConfigError: the metrics port is in use (checked first, before the broker and the model).
        ServiceUnavailableError, DimensionMismatchError: see :func:`build_stage`.
    """
    registry = CollectorRegistry()
    metrics = start_metrics_server(settings.worker.metrics_port, registry, setting="RAG_WORKER__METRICS_PORT")
    check_broker(settings.kafka)
    with contextlib.ExitStack() as resources:
        if metrics is not None:
            resources.callback(metrics.close)
        runner = build_runner(settings, build_stage(settings, registry, resources), registry)
        await serve_handler(
            settings,
            runner,
            role=STAGE,
            topics=[settings.topics.name("requests")],
            max_in_flight=settings.worker.max_in_flight or 4 * settings.worker.batch_max,
            batch_max=settings.worker.batch_max,
            registry=registry,
        )


__all__ = ["build_runner", "build_stage", "serve"]
