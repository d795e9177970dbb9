"""Retriever worker wiring: Kafka loop (group "retriever") → embed → pgvector top-k → prompt → Prompt.

A micro-batch of Requests is embedded in one forward pass on the Embedder's single encoding thread, each
query is searched in pgvector (HNSW, cosine, metadata filters, iterative scan) through a small connection
pool, the chat template is filled within the LLM server's token limits (read once from its ``/info``), and
one Prompt per request is produced to the prompts topic. Bad input goes to the dead-letter topic; a request
past its deadline is answered ``expired`` on the responses topic without any work; a prompt that cannot fit
the limits is answered with an error and dead-lettered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from confluent_kafka import Consumer
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from workers.adapters.embedding import Embedder
from workers.adapters.llm_server import ServerLimits, ServerTokenizeCounter, fetch_server_limits
from workers.adapters.pgvector import Hit, VectorStore
from workers.adapters.postgres import open_pool
from workers.adapters.tokenizers import CachedTokenCounter, LLMTokenCounter, LocalTokenizerCounter
from workers.contracts.errors import MessageError, PermanentError, PromptTooLargeError
from workers.contracts.messages import (
    ErrorInfo,
    Passage,
    Prompt,
    Provenance,
    Request,
    Response,
    ResponseStatus,
    request_deadline,
)
from workers.contracts.serde import decode, encode
from workers.kafka.admin import check_broker
from workers.kafka.config import consumer_config
from workers.kafka.loop import LoopConfig, WorkerLoop, build_loop_metrics
from workers.kafka.producer import KafkaProducer
from workers.retriever.prompt import ESTIMATE_MARGIN_TOKENS, BuiltPrompt, build_prompt, get_template
from workers.settings import Settings
from workers.stream.records import Incoming, Output, dead_letter, output_headers

log = logging.getLogger(__name__)

STAGE = "retriever"


class RetrieverMetrics:
    """Retriever-specific metrics: stage latency, truncated queries, dropped passages."""

    def __init__(self, registry: CollectorRegistry, prefix: str = "ragstream_retriever") -> None:
        buckets = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
        self.stage_seconds = Histogram(
            f"{prefix}_stage_seconds", "Time per stage per batch", ["stage"], buckets=buckets, registry=registry
        )
        self.truncated = Counter(
            f"{prefix}_queries_truncated", "Queries longer than the embedding model reads", registry=registry
        )
        self.dropped = Counter(
            f"{prefix}_passages_dropped", "Passages left out to fit the LLM token limit", registry=registry
        )
        self.prompts = Counter(f"{prefix}_prompts", "Prompts produced", registry=registry)
        self.expired = Counter(f"{prefix}_expired", "Requests past their deadline, not retrieved", registry=registry)
        self.errors = Counter(f"{prefix}_errors", "Requests failed by error class", ["error_class"], registry=registry)


class RetrieverService:
    """The retriever's handler: a micro-batch of Requests in, one Prompt (or error) per request out.

    Args:
        settings: topics, retrieval policy (top_k, ef_search, template).
        embedder: the embedding model adapter (one encoding thread).
        store: the pgvector store.
        counter: counts prompt tokens in the LLM's tokenizer.
        limits: the LLM server's token limits (from ``/info``).
        metrics: retriever metrics.
    """

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder,
        store: VectorStore,
        counter: LLMTokenCounter,
        limits: ServerLimits,
        metrics: RetrieverMetrics,
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.store = store
        self.counter = counter
        self.limits = limits
        self.metrics = metrics
        self.template = get_template(settings.retriever.template)
        self.index_rows = store.count()
        self.prompts_topic = settings.topics.name("prompts")
        self.responses_topic = settings.topics.name("responses")
        self.dead_letter_topic = settings.topics.name("dead_letter")

    async def handle(self, batch: list[Incoming]) -> Sequence[Sequence[Output]]:
        """Process one micro-batch; returns one output list per input, in order."""
        results: list[list[Output]] = [[] for _ in batch]
        live: list[tuple[int, Request]] = []
        now = datetime.now(UTC)
        for i, inc in enumerate(batch):
            try:
                req = decode(inc.value, Request)
            except MessageError as exc:
                self.metrics.errors.labels(exc.error_class).inc()
                results[i] = [dead_letter(inc, topic=self.dead_letter_topic, stage=STAGE, error=exc)]
                continue
            deadline = request_deadline(req, inc.headers)
            if deadline is not None and now > deadline:
                self.metrics.expired.inc()
                results[i] = self._error_response(
                    inc,
                    req,
                    "expired",
                    ErrorInfo(
                        error_class="expired",
                        message=f"deadline {deadline.isoformat()} passed before retrieval",
                        stage=STAGE,
                    ),
                )
                continue
            live.append((i, req))
        if not live:
            return results

        t0 = time.perf_counter()
        emb = await self.embedder.encode_async([r.query for _, r in live])
        t_embed = (time.perf_counter() - t0) * 1000.0
        self.metrics.stage_seconds.labels("embed").observe(t_embed / 1000.0)

        # One search_many per distinct top_k (usually one for the whole micro-batch): one connection, one
        # transaction, the queries back to back; search_ms is the wall time of the call that served a request.
        searched: list[tuple[list[Hit], float]] = [([], 0.0)] * len(live)
        by_k: dict[int, list[int]] = {}
        for j, (_, req) in enumerate(live):
            by_k.setdefault(req.top_k or self.settings.retriever.top_k, []).append(j)

        async def search(k: int, js: list[int]) -> None:
            ts = time.perf_counter()
            found = await asyncio.to_thread(
                self.store.search_many,
                emb.vectors[js],
                k,
                [dict(live[j][1].filters) or None for j in js],
                self.settings.retriever.ef_search,
            )
            ms = (time.perf_counter() - ts) * 1000.0
            for j, hits in zip(js, found, strict=True):
                searched[j] = (list(hits), ms)

        await asyncio.gather(*(search(k, js) for k, js in by_k.items()))
        margin = None if self.settings.retriever.exact_prompt_tokens else ESTIMATE_MARGIN_TOKENS

        def build_all() -> list[tuple[BuiltPrompt[Hit] | PermanentError, float]]:
            # All prompts of the micro-batch in one worker-thread call (token counting is CPU work).
            out: list[tuple[BuiltPrompt[Hit] | PermanentError, float]] = []
            for j, (_, req) in enumerate(live):
                tp = time.perf_counter()
                try:
                    built_one: BuiltPrompt[Hit] | PermanentError = build_prompt(
                        req.query,
                        searched[j][0],
                        self.template,
                        self.counter.count,
                        self.limits.max_input_tokens,
                        self.limits.max_total_tokens,
                        req.generation.max_new_tokens,
                        margin,
                    )
                except PermanentError as exc:
                    built_one = exc
                out.append((built_one, (time.perf_counter() - tp) * 1000.0))
            return out

        prompts_built = await asyncio.to_thread(build_all)
        for j, (i, req) in enumerate(live):
            search_ms = searched[j][1]
            self.metrics.stage_seconds.labels("search").observe(search_ms / 1000.0)
            inc = batch[i]
            built, prompt_ms = prompts_built[j]
            if isinstance(built, PermanentError):
                results[i] = self._fail(inc, req, built)
                continue
            truncated = bool(emb.truncated[j])
            if truncated:
                self.metrics.truncated.inc()
            if built.passages_dropped:
                self.metrics.dropped.inc(built.passages_dropped)
            prompt = Prompt(
                request_id=req.request_id,
                request=req,
                passages=[
                    Passage(
                        chunk_id=h.chunk_id,
                        document_id=h.document_id,
                        score=h.score,
                        text=h.text,
                        rank=r,
                        tokens=built.passage_tokens[r],
                    )
                    for r, h in enumerate(built.passages_kept)
                ],
                messages=list(built.messages),
                template_id=self.template.template_id,
                template_hash=self.template.template_hash,
                prompt_tokens=built.prompt_tokens,
                max_new_tokens=built.max_new_tokens,
                passages_dropped=built.passages_dropped,
                query_tokens=int(emb.token_counts[j]),
                query_truncated=truncated,
                embedding_model=self.embedder.model_name,
                provenance=Provenance(
                    embedding_model=self.embedder.model_name,
                    embedding_revision=self.embedder.revision,
                    index_name=self.settings.retriever.table,
                    index_rows=self.index_rows,
                    top_k=req.top_k or self.settings.retriever.top_k,
                    ef_search=max(self.settings.retriever.ef_search, req.top_k or self.settings.retriever.top_k),
                    filters=dict(req.filters),
                    chunk_tokens=self.settings.embedding.chunk_tokens,
                    template_id=self.template.template_id,
                    template_hash=self.template.template_hash,
                    generation=req.generation,
                    run_id=inc.headers.get("replay_run") or None,
                ),
                timings_ms={
                    "retriever_queue_ms": max(0.0, (now - req.created_at).total_seconds() * 1000.0),
                    "embed_ms": t_embed,
                    "search_ms": search_ms,
                    "prompt_ms": prompt_ms,
                },
            )
            value = encode(prompt)
            if len(value) > self.settings.kafka.message_max_bytes:
                too_large = PromptTooLargeError(
                    f"prompt of {len(value)} bytes exceeds the producer's message.max.bytes "
                    f"{self.settings.kafka.message_max_bytes}"
                )
                results[i] = self._fail(inc, req, too_large)
                continue
            self.metrics.prompts.inc()
            results[i] = [
                Output(
                    topic=self.prompts_topic,
                    value=value,
                    key=inc.key or str(req.request_id),
                    headers=output_headers(inc, request_id=str(req.request_id)),
                )
            ]
        return results

    def _fail(self, inc: Incoming, req: Request, exc: PermanentError) -> list[Output]:
        """A permanent failure for one request: an error Response to the client plus a dead letter."""
        self.metrics.errors.labels(exc.error_class).inc()
        info = ErrorInfo(error_class=exc.error_class, message=str(exc)[:2000], stage=STAGE)
        outs = self._error_response(inc, req, "error", info)
        outs.append(dead_letter(inc, topic=self.dead_letter_topic, stage=STAGE, error=exc, request_id=req.request_id))
        return outs

    def _error_response(self, inc: Incoming, req: Request, status: ResponseStatus, error: ErrorInfo) -> list[Output]:
        resp = Response(request_id=req.request_id, status=status, answer=None, error=error, attempts=0)
        headers = output_headers(inc, request_id=str(req.request_id))
        key = inc.key or str(req.request_id)
        outs = [Output(topic=self.responses_topic, value=encode(resp), key=key, headers=headers)]
        if req.reply_topic and req.reply_topic != self.responses_topic:
            outs.append(Output(topic=req.reply_topic, value=encode(resp), key=key, headers=headers))
        return outs


def build_service(settings: Settings, registry: CollectorRegistry) -> RetrieverService:
    """Create the retriever's clients (model, pool, token counter) and check them before consuming.

    Raises:
        ServiceUnavailableError: PostgreSQL or the LLM server cannot be reached.
        DimensionMismatchError: the vector table's dimension differs from the model's.
    """
    embedder = Embedder.from_settings(settings.embedding)
    pool = open_pool(settings.database_url.get_secret_value(), min_size=1, max_size=4, vector=True)
    store = VectorStore(pool, table=settings.retriever.table, dimension=embedder.dimension)
    store.ensure_schema(embedder.model_name)  # idempotent; raises DimensionMismatchError on a wrong column
    limits = fetch_server_limits(settings.llm.url)
    if limits.max_total_tokens is None:
        limits = ServerLimits(
            max_input_tokens=settings.retriever.default_max_total_tokens - 1,
            max_total_tokens=settings.retriever.default_max_total_tokens,
            model_id=limits.model_id,
        )
    counter: LLMTokenCounter
    if settings.retriever.llm_tokenizer:
        counter = LocalTokenizerCounter(settings.retriever.llm_tokenizer)
    else:
        counter = ServerTokenizeCounter(settings.llm.url)
    counter = CachedTokenCounter(counter, settings.retriever.token_cache_entries)
    log.info(
        "retriever ready model=%s dim=%d table=%s rows=%d llm=%s max_total_tokens=%s",
        embedder.model_name,
        embedder.dimension,
        settings.retriever.table,
        store.count(),
        limits.model_id,
        limits.max_total_tokens,
    )
    return RetrieverService(settings, embedder, store, counter, limits, RetrieverMetrics(registry))


async def serve(settings: Settings) -> None:
    """Run the retriever worker until SIGTERM/SIGINT.

    Raises:
        ServiceUnavailableError, DimensionMismatchError: see :func:`build_service`.
    """
    check_broker(settings.kafka)
    registry = CollectorRegistry()
    service = build_service(settings, registry)
    if settings.worker.metrics_port:
        start_http_server(settings.worker.metrics_port, registry=registry)
    group = settings.worker.group_id or settings.topics.prefix + "retriever"
    loop = WorkerLoop(
        LoopConfig(
            role=STAGE,
            topics=[settings.topics.name("requests")],
            dead_letter_topic=settings.topics.name("dead_letter"),
            max_in_flight=settings.worker.max_in_flight or 4 * settings.worker.batch_max,
            batch_max=settings.worker.batch_max,
            shutdown_timeout_s=settings.worker.shutdown_timeout_s,
        ),
        Consumer(consumer_config(settings.kafka, group)),
        KafkaProducer(settings.kafka, poll_after_produce=False),
        service.handle,
        build_loop_metrics(registry, role=STAGE),
    )
    loop.install_signal_handlers()
    await loop.run()


__all__ = ["RetrieverService", "build_service", "serve"]
