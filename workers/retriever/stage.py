"""The retriever stage: Requests in, Prompts out (embed → pgvector top-k → the chat template within the token budget).

It knows no transport: it gets a micro-batch of decoded Requests and returns one :class:`Prompt` (or a
:class:`Failure`) per request, in order; the stream runner (:mod:`workers.stream.runner`) decodes, checks
expiry, produces, answers errors and dead-letters. The adapters come in through the constructor (the query
embedder, the chunk search, the LLM token counter and the server's limits; :mod:`workers.adapters.interfaces`).

A micro-batch is embedded in one forward pass, searched with one ``search_many`` per distinct ``top_k`` (one
connection, one transaction), and its prompts are built in one worker-thread call (token counting is CPU work).

Two requests get an answer here instead of a prompt, so no LLM is called for them:

* filters on a field the index does not have (``{"no_such_field": "x"}``): ``rejected``, naming the field and the
  known ones (``document_id``, ``chunk_id`` and the chunks' metadata keys, which the store reports and the stage
  caches, asking again at most every :data:`FILTER_FIELDS_REFRESH_S` seconds when a field is not known yet);
* a search that finds no passage at all: ``no_context``, with the fixed ``retriever.no_context_message``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from workers.adapters.interfaces import ChunkSearch, Hit, LLMTokenCounter, QueryEmbedder, ServerInfo
from workers.contracts.errors import PermanentError, UnknownFilterFieldError
from workers.contracts.messages import Passage, Prompt, Provenance, Request, Response
from workers.retriever.conversation import search_query
from workers.retriever.metrics import RetrieverMetrics
from workers.retriever.prompt import ESTIMATE_MARGIN_TOKENS, BuiltPrompt, build_prompt, get_template
from workers.settings import EmbeddingSettings, RetrieverSettings
from workers.stream.results import Failure

STAGE = "retriever"
#: Seconds before the stage asks the store again for its filterable fields when a request names an unknown one.
FILTER_FIELDS_REFRESH_S = 30.0
#: Known field names listed in an unknown-field answer, at most.
_FIELDS_LISTED = 40


class RetrieverStage:
    """``retrieve(requests) -> [Prompt | Response | Failure]``.

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
        self._fields: frozenset[str] | None = None
        self._fields_at = 0.0

    async def run(self, inputs: Sequence[Request]) -> list[Prompt | Response | Failure]:
        """Retrieve and build the prompt of each request; one result per request, in order.

        A request that filters on an unknown field is a ``rejected`` failure (not dead-lettered: the input is
        well-formed); one whose search finds nothing is answered ``no_context`` (see the module docstring).

        Raises:
            RetryableError: the database was briefly unavailable (the runner retries the batch).
        """
        requests = list(inputs)
        if not requests:
            return []
        refused = await self._unknown_filters(requests)
        if refused:
            results: list[Prompt | Response | Failure | None] = [refused.get(j) for j in range(len(requests))]
            rest = [j for j, r in enumerate(results) if r is None]
            for j, one in zip(rest, await self._retrieve([requests[j] for j in rest]), strict=True):
                results[j] = one
            return [r for r in results if r is not None]
        return await self._retrieve(requests)

    async def _unknown_filters(self, requests: list[Request]) -> dict[int, Failure]:
        """``rejected`` failures of the requests (by position) whose filters name a field the index does not have."""
        wanted = {key for r in requests for key in r.filters}
        if not wanted:
            return {}
        stale = time.monotonic() - self._fields_at > FILTER_FIELDS_REFRESH_S
        if self._fields is None or (stale and not wanted <= self._fields):
            self._fields = frozenset(await asyncio.to_thread(self.store.filter_fields))
            self._fields_at = time.monotonic()
        known = sorted(self._fields)
        listed = ", ".join(known[:_FIELDS_LISTED]) + (f" (and {len(known) - _FIELDS_LISTED} more)" if
                                                       len(known) > _FIELDS_LISTED else "")  # fmt: skip
        out: dict[int, Failure] = {}
        for j, req in enumerate(requests):
            unknown = sorted(set(req.filters) - self._fields)
            if unknown:
                names = ", ".join(repr(u) for u in unknown)
                err = UnknownFilterFieldError(
                    f"unknown filter field {names} in {self.settings.table}; known fields: {listed}", field=unknown[0]
                )
                out[j] = Failure(err, status="rejected", dead_letter=False)
        return out

    async def _retrieve(self, requests: list[Request]) -> list[Prompt | Response | Failure]:
        """Embed, search and build the prompts of ``requests`` (filters known); ``no_context`` answers for none."""
        if not requests:
            return []
        now = datetime.now(UTC)
        t0 = time.perf_counter()
        queries = [search_query(r.query, r.history) for r in requests]
        emb = await self.embedder.encode_async(queries)
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
                [queries[j] for j in js],
            )
            ms = (time.perf_counter() - ts) * 1000.0
            for j, hits in zip(js, found, strict=True):
                searched[j] = (list(hits), ms)

        await asyncio.gather(*(search(k, js) for k, js in by_k.items()))
        found_any = [j for j, (hits, _) in enumerate(searched) if hits]
        built_some = await asyncio.to_thread(self._build_all, [requests[j] for j in found_any],
                                             [searched[j][0] for j in found_any])  # fmt: skip
        built = dict(zip(found_any, built_some, strict=True))
        out: list[Prompt | Response | Failure] = []
        for j, req in enumerate(requests):
            search_ms = searched[j][1]
            self.metrics.stage_seconds.labels("search").observe(search_ms / 1000.0)
            if j not in built:
                timings = {
                    "retriever_queue_ms": max(0.0, (now - req.created_at).total_seconds() * 1000.0),
                    "embed_ms": t_embed,
                    "search_ms": search_ms,
                }
                out.append(self._no_context(req, timings))
                continue
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
                    req.history,
                )
            except PermanentError as exc:
                one = exc
            out.append((one, (time.perf_counter() - tp) * 1000.0))
        return out

    def _no_context(self, req: Request, timings: dict[str, float]) -> Response:
        """The ``no_context`` answer to a request whose search found no passage (no LLM call)."""
        now = datetime.now(UTC)
        timings["end_to_end_ms"] = max(0.0, (now - req.created_at).total_seconds() * 1000.0)
        return Response(
            request_id=req.request_id,
            created_at=now,
            status="no_context",
            answer=self.settings.no_context_message,
            timings_ms=timings,
            attempts=0,
            provenance=self._provenance(req),
        )

    def _provenance(self, req: Request) -> Provenance:
        """Retrieval and prompt settings that served ``req`` (the generator adds the LLM's)."""
        k = self._top_k(req)
        return Provenance(
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
        )

    def _prompt(
        self, req: Request, built: BuiltPrompt[Hit], query_tokens: int, truncated: bool, timings: dict[str, float]
    ) -> Prompt:
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
            provenance=self._provenance(req),
            timings_ms=timings,
        )
