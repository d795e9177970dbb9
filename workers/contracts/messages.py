"""Wire models of the four message kinds (DESIGN.md §4), validated when a message enters a stage.

Every message is JSON with ``schema_version``, ``request_id`` (UUID) and ``created_at`` (UTC). Headers
(``request_id``, ``traceparent``, ``deadline``) are written by ``workers/kafka.py``; serialization lives
in :mod:`workers.contracts.serde`, not here. ``ragstream schema`` writes the JSON Schemas of these models.

Units: every ``*_ms`` field and every value of a ``timings_ms`` map is in milliseconds; token counts are
tokens of the named model's tokenizer.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Version of the wire format written by this code; readers reject other versions (dead letter).
SCHEMA_VERSION = 1


def utcnow() -> datetime:
    """Current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


class _Wire(BaseModel):
    # Unknown fields are ignored, so a reader keeps working while a newer writer adds optional fields during a
    # rolling upgrade; a change that breaks readers bumps schema_version, which readers reject (dead letter).
    model_config = ConfigDict(extra="ignore", frozen=True)


class GenerationParams(_Wire):
    """Sampling parameters passed to the LLM server (TGI names)."""

    max_new_tokens: int = Field(256, ge=1, le=32_768, description="Upper bound of generated tokens.")
    temperature: float | None = Field(None, ge=0.0, le=5.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list, max_length=8)


class Request(_Wire):
    """A user's question, produced by a client to the requests topic."""

    schema_version: Literal[1] = 1
    request_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    created_at: datetime = Field(default_factory=utcnow)
    query: str = Field(min_length=1, max_length=20_000)
    top_k: int | None = Field(None, ge=1, le=100)
    #: Metadata filters on chunks: ``{"document_id": ["with", "try"]}``; a scalar means one value.
    filters: dict[str, str | list[str]] = Field(default_factory=dict)
    generation: GenerationParams = Field(default_factory=lambda: GenerationParams())
    deadline: datetime | None = None
    reply_topic: str | None = None
    session_id: str | None = None

    @field_validator("created_at", "deadline")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("datetimes must carry a timezone (UTC)")
        return v


class Passage(_Wire):
    """One retrieved chunk with its cosine similarity (1 = same direction)."""

    chunk_id: str
    document_id: str
    score: float
    text: str
    rank: int = Field(ge=0, description="0 = best ranked")
    tokens: int = Field(0, ge=0, description="Tokens of the LLM tokenizer this passage takes in the prompt.")
    text_score: float | None = Field(None, description="Full-text rank (ts_rank_cd) when the query's words matched.")
    fused_score: float | None = Field(None, description="Reciprocal-rank-fusion score (hybrid search).")
    context: str = Field("", description="Title / nearest heading the chunk was indexed with (not in text).")


class ChatMessage(_Wire):
    """One message of the chat sent to the LLM server (Messages API)."""

    role: Literal["system", "user", "assistant"]
    content: str


class Provenance(_Wire):
    """What produced an answer, so runs can be compared (replay/evaluate): retrieval, prompt and LLM settings.

    The retriever fills the retrieval and prompt part; the generator adds the LLM part.
    """

    embedding_model: str = ""
    #: Revision of the embedding weights: first 12 hex of the sha256 of the weights file.
    embedding_revision: str = ""
    index_name: str = ""
    #: Search mode: ``dense``, ``text`` or ``hybrid``.
    retrieval_mode: str = ""
    #: Rows in the index when the retriever started (chunks).
    index_rows: int = 0
    top_k: int = 0
    ef_search: int = 0
    filters: dict[str, str | list[str]] = Field(default_factory=dict)
    chunk_tokens: int = 0
    template_id: str = ""
    template_hash: str = ""
    llm_model_id: str | None = None
    llm_model_revision: str | None = None
    llm_api: str | None = None
    generation: GenerationParams | None = None
    #: Replay run id (the ``replay_run`` header) when this request came from ``ragstream replay``.
    run_id: str | None = None


class Prompt(_Wire):
    """A request with its retrieved passages and the filled chat template; retriever → generator."""

    schema_version: Literal[1] = 1
    request_id: uuid.UUID
    created_at: datetime = Field(default_factory=utcnow)
    request: Request
    passages: list[Passage]
    messages: list[ChatMessage] = Field(min_length=1)
    template_id: str
    template_hash: str
    prompt_tokens: int = Field(ge=0, description="Tokens of the filled template (LLM tokenizer).")
    max_new_tokens: int = Field(ge=1, description="Generation budget after fitting the server's limits.")
    passages_dropped: int = Field(0, ge=0, description="Lowest-ranked passages left out to fit the limit.")
    query_tokens: int = Field(0, ge=0, description="Tokens of the query in the embedding tokenizer.")
    query_truncated: bool = Field(False, description="Query was longer than the embedding model reads.")
    embedding_model: str = ""
    provenance: Provenance = Field(default_factory=lambda: Provenance())
    timings_ms: dict[str, float] = Field(default_factory=dict)


class Usage(_Wire):
    """Token usage reported by the LLM server."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class Source(_Wire):
    """A passage the answer was generated from, and whether the answer cites it."""

    document_id: str
    chunk_id: str
    score: float
    cited: bool = Field(False, description="The answer cites this passage (see cited_by).")
    cited_by: Literal["model", "attribution"] | None = Field(
        None, description="model: the answer's [n] marker; attribution: word overlap of an answer sentence."
    )


class ErrorInfo(_Wire):
    """Why a request failed."""

    error_class: str
    message: str
    stage: str


ResponseStatus = Literal["ok", "error", "expired", "model_unavailable"]


class Response(_Wire):
    """The answer to one request id; generator → client and monitor."""

    schema_version: Literal[1] = 1
    request_id: uuid.UUID
    created_at: datetime = Field(default_factory=utcnow)
    status: ResponseStatus = "ok"
    answer: str | None
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    model_id: str | None = None
    model_revision: str | None = None
    sources: list[Source] = Field(default_factory=list)
    #: Per-stage times (ms): retrieval (embed, search, prompt), queue waits, LLM TTFT and total.
    timings_ms: dict[str, float] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    attempts: int = Field(1, ge=0, description="LLM calls made for this answer (retries included).")
    provenance: Provenance | None = None
    groundedness: float | None = Field(
        None, ge=0.0, le=1.0, description="Share of the answer's content words found in the passages it cites."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Response:
        if self.status == "ok" and self.answer is None:
            raise ValueError("a Response with status 'ok' must carry an answer")
        if self.status != "ok" and self.error is None:
            raise ValueError(f"a Response with status {self.status!r} must carry an error")
        return self


class DeadLetter(_Wire):
    """A message a stage could not process, with everything needed to replay it."""

    schema_version: Literal[1] = 1
    request_id: uuid.UUID | None = None
    created_at: datetime = Field(default_factory=utcnow)
    source_topic: str
    partition: int
    offset: int
    key: str | None = Field(None, description="Message key, base64.")
    value_b64: str = Field(description="The raw value bytes, base64 (the first 512 KiB when truncated).")
    value_bytes: int = Field(0, ge=0, description="Length of the original value (bytes).")
    value_truncated: bool = False
    headers: dict[str, str] = Field(default_factory=dict)
    error_class: str
    error_message: str
    stage: str
    attempts: int = 1
    first_failure_at: datetime = Field(default_factory=utcnow)
    last_failure_at: datetime = Field(default_factory=utcnow)


def request_deadline(request: Request, headers: dict[str, str]) -> datetime | None:
    """The request's deadline: its ``deadline`` field, else the ``deadline`` header (ISO 8601 with timezone).

    A header that does not parse, or has no timezone, is ignored (the field is the contract; the header lets
    a stage drop a late message before decoding it fully).
    """
    if request.deadline is not None:
        return request.deadline
    raw = headers.get("deadline")
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return value if value.tzinfo is not None else None


WIRE_MODELS: dict[str, type[BaseModel]] = {
    "request": Request,
    "prompt": Prompt,
    "response": Response,
    "dead_letter": DeadLetter,
}
