"""What the stages need from the outside world, as protocols and plain result types (no I/O library imported).

Stages (:mod:`workers.retriever.stage`, :mod:`workers.generator.stage`) depend on these interfaces only; the
implementations live beside them in :mod:`workers.adapters` (sentence-transformers embedder, pgvector store,
LLM server client, in-process engine, PostgreSQL answer store) and are chosen and built by the wiring modules
(``app.py``, the CLI). An interface never imports an implementation (TGI's ``models/model.py`` + ``get_model``
is the model of this split), so a unit test can pass a fake and an integration test the real thing.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from workers.contracts.messages import ChatMessage, GenerationParams, Passage, Request, Response, Usage

# --------------------------------------------------------------------------- embedding


@dataclass(frozen=True)
class EmbedResult:
    """Embeddings of n texts.

    Attributes:
        vectors: ``(n, dimension)`` float32, each row L2-normalized (unit length).
        token_counts: tokens of each text in the model's tokenizer, special tokens included.
        truncated: True where the text has more than ``max_seq_length`` tokens, i.e. the model read only
            its first ``max_seq_length`` tokens.
    """

    vectors: np.ndarray
    token_counts: list[int]
    truncated: list[bool]


class QueryEmbedder(Protocol):
    """Embeds queries for search (implementation: :class:`workers.adapters.embedding.Embedder`)."""

    model_name: str
    #: First 12 hex of the sha256 of the weights file ("" when unknown).
    revision: str
    #: Output dimension (floats per vector).
    dimension: int

    async def encode_async(self, texts: list[str]) -> EmbedResult:
        """Embed ``texts`` (n strings) without blocking the event loop; returns ``(n, dimension)`` vectors."""
        ...


# --------------------------------------------------------------------------- search


@dataclass(frozen=True)
class Hit:
    """One search result.

    Attributes:
        score: cosine similarity ``1 - cosine_distance`` (1 = same direction, 0 = orthogonal, -1 = opposite),
            whatever the search mode.
        text_score: full-text rank (PostgreSQL ``ts_rank_cd``, cover density; higher is better) when the chunk
            matched the query's words, else ``None`` (always ``None`` in dense mode).
        fused_score: reciprocal-rank-fusion score in hybrid mode (``Σ w / (k_rrf + rank)``), else ``None``.
        context: the title / nearest heading the chunk was indexed with (not part of ``text``).
    """

    chunk_id: str
    document_id: str
    chunk_index: int
    text: str
    score: float
    text_score: float | None = None
    fused_score: float | None = None
    context: str = ""


@dataclass(frozen=True)
class ChunkRow:
    """One chunk to store (written by ingestion, stored by :class:`workers.adapters.pgvector.VectorStore`).

    Attributes:
        chunk_id: ``f"{document_id}#{chunk_index}"``.
        document_id: the source document.
        chunk_index: position of the chunk in its document (0-based).
        text: the chunk text.
        content_hash: sha256 hex of the embedded text (``context`` and ``text``); unique per document.
        token_count: tokens of the embedding model's tokenizer, special tokens included.
        embedding: ``(dimension,)`` float32, L2-normalized.
        metadata: JSON-serializable extra fields, matched by filters.
    """

    chunk_id: str
    document_id: str
    chunk_index: int
    text: str
    content_hash: str
    token_count: int
    embedding: Any
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Title and nearest heading of the chunk, embedded and indexed with it but stored apart from ``text``.
    context: str = ""


#: Metadata filters: key → one value or a list of accepted values.
Filters = Mapping[str, str | Sequence[str]]


class ChunkSearch(Protocol):
    """Nearest chunks of query vectors (implementation: :class:`workers.adapters.pgvector.VectorStore`)."""

    def search_many(
        self,
        query_vectors: Any,
        k: int,
        filters: Sequence[Filters | None] | None = None,
        ef_search: int | None = None,
        queries: Sequence[str] | None = None,
    ) -> list[list[Hit]]:
        """Top-``k`` hits of each query (``(n, dimension)`` vectors and, for full-text and hybrid search, the n
        query texts), best first; blocking (call it in a thread).

        Raises:
            RetryableError: the database is briefly unavailable.
            PermanentError: the query failed for good.
        """
        ...

    def count(self) -> int:
        """Rows (chunks) in the index."""
        ...

    def filter_fields(self) -> frozenset[str]:
        """The fields a filter may name: ``document_id``, ``chunk_id`` and every metadata key in the index.

        Blocking (call it in a thread).

        Raises:
            RetryableError: the database is briefly unavailable.
        """
        ...


# --------------------------------------------------------------------------- tokens


@runtime_checkable
class LLMTokenCounter(Protocol):
    """Counts tokens of texts as one tokenizer sees them."""

    def count(self, texts: list[str]) -> list[int]:
        """Return the number of tokens of each text (special tokens the tokenizer adds included)."""
        ...


# --------------------------------------------------------------------------- the LLM


@dataclass(frozen=True)
class ServerInfo:
    """What the LLM server says about itself (TGI ``GET /info`` field names).

    Attributes:
        model_id: the served model's id.
        model_sha: revision of the weights, if known.
        max_input_tokens: most prompt tokens the server accepts (``None`` if it does not say).
        max_total_tokens: most prompt + generated tokens of one request (``None`` if it does not say).
        max_concurrent_requests: requests the server serves at once, if it says.
    """

    model_id: str
    model_sha: str | None = None
    max_input_tokens: int | None = None
    max_total_tokens: int | None = None
    max_concurrent_requests: int | None = None


@dataclass(frozen=True)
class Generation:
    """One finished generation.

    Attributes:
        text: the generated answer.
        finish_reason: server's reason (``length``, ``stop``, ``eos_token``, ``stop_sequence``).
        prompt_tokens: input tokens as counted by the server (0 when it did not say).
        completion_tokens: generated tokens (server count, else stream events counted).
        model_id: the server's model id (``/info`` or the response's ``model`` field).
        ttft_ms: time to first token, ms, measured from the request start of the last attempt.
        total_ms: wall time of the successful attempt, ms.
        attempts: calls made, retries included.
    """

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    model_id: str | None
    ttft_ms: float
    total_ms: float
    attempts: int


#: ``on_text(delta, attempt)``: a new piece of the answer's text as it is generated (a stop sequence is never passed
#: on) and the number of the LLM call it belongs to within one ``generate`` (1 = the first; a retried call starts its
#: text anew, from the beginning).
OnText = Callable[[str, int], Awaitable[None]]


class LLM(Protocol):
    """Generates answers (implementations: :class:`workers.adapters.llm_server.LLMServerClient` over HTTP,
    :class:`workers.adapters.llm_engine.EngineLLM` in-process).

    Errors are the project's (:mod:`workers.contracts.errors`): ``LLMRetryableError`` subclasses after the
    adapter's own bounded retries, ``LLMValidationError`` / ``LLMStreamError`` for a request that cannot succeed.
    """

    #: "chat" (Messages API) or "text_generation" (TGI ``/generate``; "engine" in-process).
    api: str
    #: Most attempts one :meth:`generate` makes (first included); reported in ``model_unavailable`` answers.
    max_attempts: int

    @property
    def server_info(self) -> ServerInfo | None:
        """What the server said about itself (``None`` before :meth:`info` succeeded once)."""
        ...

    async def info(self) -> ServerInfo:
        """Read (once) and return what the server says about itself."""
        ...

    async def generate(
        self, messages: list[ChatMessage], params: GenerationParams, on_text: OnText | None = None
    ) -> Generation:
        """Generate one answer to ``messages`` within ``params.max_new_tokens`` tokens; ``on_text`` (when given) is
        awaited with the text as it streams in."""
        ...

    async def close(self) -> None:
        """Release connections (or the model)."""
        ...


# --------------------------------------------------------------------------- finished answers


class AnswerStore(Protocol):
    """Finished answers by request id, for effectively-once answers.

    Implementation: :class:`workers.adapters.answers.PgAnswerStore`.

    Both methods raise ``RetryableError`` when the store cannot be reached.
    """

    async def get(self, request_id: uuid.UUID) -> Response | None:
        """The stored Response for this request id, or ``None``."""
        ...

    async def put(self, response: Response) -> bool:
        """Store a final Response (first write wins); True when it was new."""
        ...


# --------------------------------------------------------------------------- answers as they are generated


class TokenStream(Protocol):
    """Where the text of one request's answer goes as it is generated (one per request; the generator stage opens
    it with :meth:`TokenSink.open`). Implementations batch and number the events."""

    async def text(self, attempt: int, delta: str) -> None:
        """The next piece of attempt ``attempt``'s text (a new, higher attempt starts its text from the beginning)."""
        ...

    async def finish(self, attempt: int, finish_reason: str | None, usage: Usage, passages: list[Passage]) -> None:
        """The end of attempt ``attempt``: what is pending is sent, then the final event; returns once delivered.

        Raises:
            RetryableError: the events could not be delivered (the answer itself still goes out).
        """
        ...

    def close(self) -> None:
        """No final event will come (the generation failed or was cancelled): drop what is pending."""
        ...


class TokenSink(Protocol):
    """Opens the token stream of a request that asks for one (``Request.stream_tokens``)."""

    def open(self, request: Request) -> TokenStream:
        """The stream of ``request``'s answer."""
        ...


class CancelWatch(Protocol):
    """Which requests their clients gave up on (cancel events on the control topic)."""

    def is_cancelled(self, request_id: uuid.UUID) -> bool:
        """True when a cancel for ``request_id`` has been seen."""
        ...

    async def wait_cancelled(self, request_id: uuid.UUID) -> None:
        """Return once ``request_id`` is cancelled (at once when it already is)."""
        ...
