"""The retriever stage: Requests in, Prompts out (embed → pgvector top-k → the chat template within the token budget).

It knows no transport: it gets a micro-batch of decoded Requests and returns one :class:`Prompt` (or a
:class:`Failure`) per request, in order; the stream runner (:mod:`workers.stream.runner`) decodes, checks
expiry, produces, answers errors and dead-letters. The adapters come in through the constructor (the query
embedder, the chunk search, the LLM token counter and the server's limits; :mod:`workers.adapters.interfaces`).

A micro-batch is embedded in one forward pass, searched with one ``search_many`` per distinct ``top_k`` (one
connection, one transaction), and its prompts are built in one worker-thread call (token counting is CPU work).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from workers.adapters.interfaces import ChunkSearch, Hit, LLMTokenCounter, QueryEmbedder, ServerInfo
from workers.contracts.errors import PermanentError
from workers.contracts.messages import Passage, Prompt, Provenance, Request
from workers.retriever.metrics import RetrieverMetrics
from workers.retriever.prompt import ESTIMATE_MARGIN_TOKENS, BuiltPrompt, build_prompt, get_template
from workers.settings import EmbeddingSettings, RetrieverSettings
from workers.stream.results import Failure

STAGE = "retriever"


class RetrieverStage:
    """``retrieve(requests) -> [Prompt | Failure]``.

    Args:
        settings: retrieval policy (top_k, ef_search, template, table name, exact token counting).
        embedder: embeds the queries.
        store: searches the chunks.
        counter: counts prompt tokens in the LLM's tokenizer.
        limits: the LLM server's token limits; a missing ``max_total_tokens`` falls back to
            ``settings.default_max_total_tokens``.
        metrics: retriever metrics (a private registry if omitted).
        chunk_tokens: chunk size of the index (tokens), recorded in the provenance.
        index_rows: rows in the index (recorded in the provenance); default: counted once now.
    """

    name = STAGE

    def __init__(
        self,
        settings: RetrieverSettings,
        embedder: QueryEmbedder,
        store: ChunkSearch,
        counter: LLMTokenCounter,
        limits: ServerInfo,
        metrics: RetrieverMetrics | None = None,
        *,
        chunk_tokens: int = EmbeddingSettings().chunk_tokens,
        index_rows: int | None = None,
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.store = store
        self.counter = counter
        if limits.max_total_tokens is None:
            total = settings.default_max_total_tokens
            limits = ServerInfo(
                model_id=limits.model_id, model_sha=limits.model_sha, max_input_tokens=total - 1, max_total_tokens=total
            )
        self.limits = limits
        self.metrics = metrics or RetrieverMetrics()
        self.template = get_template(settings.template)
        self.chunk_tokens = chunk_tokens
        self.index_rows = store.count() if index_rows is None else index_rows

    async def run(self, inputs: Sequence[Request]) -> list[Prompt | Failure]:
        """Retrieve and build the prompt of each request; one result per request, in order.

        Raises:
            RetryableError: the database was briefly unavailable (the runner retries the batch).
        """
        requests = list(inputs)
        if not requests:
            return []
        now = datetime.now(UTC)
        t0 = time.perf_counter()
        emb = await self.embedder.encode_async([r.query for r in requests])
        t_embed = (time.perf_counter() - t0) * 1000.0
        self.metrics.stage_seconds.labels("embed").observe(t_embed / 1000.0)

        # One search_many per distinct top_k (usually one for the whole micro-batch): one connection, one
        # transaction, the queries back to back; search_ms is the wall time of the call that served a request.
        searched: list[tuple[list[Hit], float]] = [([], 0.0)] * len(requests)
        by_k: dict[int, list[int]] = {}
        for j, req in enumerate(requests):
            by_k.setdefault(self._top_k(req), []).append(j)

        async def search(k: int, js: list[int]) -> None:
            ts = time.perf_counter()
            found = await asyncio.to_thread(
                self.store.search_many,
                emb.vectors[js],
                k,
                [dict(requests[j].filters) or None for j in js],
                self.settings.ef_search,
                [requests[j].query for j in js],
            )
            ms = (time.perf_counter() - ts) * 1000.0
            for j, hits in zip(js, found, strict=True):
                searched[j] = (list(hits), ms)

        await asyncio.gather(*(search(k, js) for k, js in by_k.items()))
        built = await asyncio.to_thread(self._build_all, requests, [hits for hits, _ in searched])
        out: list[Prompt | Failure] = []
        for j, req in enumerate(requests):
            search_ms = searched[j][1]
            self.metrics.stage_seconds.labels("search").observe(search_ms / 1000.0)
            one, prompt_ms = built[j]
            if isinstance(one, PermanentError):
                out.append(Failure(one))
                continue
            truncated = bool(emb.truncated[j])
            if truncated:
                self.metrics.truncated.inc()
            if one.passages_dropped:
                self.metrics.dropped.inc(one.passages_dropped)
            self.metrics.prompts.inc()
            timings = {
                "retriever_queue_ms": max(0.0, (now - req.created_at).total_seconds() * 1000.0),
                "embed_ms": t_embed,
                "search_ms": search_ms,
                "prompt_ms": prompt_ms,
            }
            out.append(self._prompt(req, one, int(emb.token_counts[j]), truncated, timings))
        return out

    def _top_k(self, req: Request) -> int:
        return req.top_k or self.settings.top_k

    def _build_all(
        self, requests: list[Request], hits: list[list[Hit]]
    ) -> list[tuple[BuiltPrompt[Hit] | PermanentError, float]]:
        """Build every prompt of the micro-batch (in a worker thread): the prompt or why it cannot fit, and ms."""
        margin = None if self.settings.exact_prompt_tokens else ESTIMATE_MARGIN_TOKENS
        out: list[tuple[BuiltPrompt[Hit] | PermanentError, float]] = []
        for req, found in zip(requests, hits, strict=True):
            tp = time.perf_counter()
            try:
                one: BuiltPrompt[Hit] | PermanentError = build_prompt(
                    req.query,
                    found,
                    self.template,
                    self.counter.count,
                    self.limits.max_input_tokens,
                    self.limits.max_total_tokens,
                    req.generation.max_new_tokens,
                    margin,
                )
            except PermanentError as exc:
                one = exc
            out.append((one, (time.perf_counter() - tp) * 1000.0))
        return out

    def _prompt(
        self, req: Request, built: BuiltPrompt[Hit], query_tokens: int, truncated: bool, timings: dict[str, float]
    ) -> Prompt:
        k = self._top_k(req)
        return Prompt(
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
                    text_score=h.text_score,
                    fused_score=h.fused_score,
                    context=h.context,
                )
                for r, h in enumerate(built.passages_kept)
            ],
            messages=list(built.messages),
            template_id=self.template.template_id,
            template_hash=self.template.template_hash,
            prompt_tokens=built.prompt_tokens,
            max_new_tokens=built.max_new_tokens,
            passages_dropped=built.passages_dropped,
            query_tokens=query_tokens,
            query_truncated=truncated,
            embedding_model=self.embedder.model_name,
            provenance=Provenance(
                embedding_model=self.embedder.model_name,
                embedding_revision=self.embedder.revision,
                index_name=self.settings.table,
                retrieval_mode=self.settings.mode,
                index_rows=self.index_rows,
                top_k=k,
                ef_search=max(self.settings.ef_search, k),
                filters=dict(req.filters),
                chunk_tokens=self.chunk_tokens,
                template_id=self.template.template_id,
                template_hash=self.template.template_hash,
                generation=req.generation,
            ),
            timings_ms=timings,
        )
