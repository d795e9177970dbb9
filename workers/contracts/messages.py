"""Wire models of the message kinds (DESIGN.md §5), validated when a message enters a stage.

Every message is JSON with ``schema_version``, ``request_id`` (UUID) and ``created_at`` (UTC). A Request built in
Python gets a fresh request id when none is given, but one read from the wire must carry its own (validation
context :data:`WIRE_CONTEXT`, passed by :func:`workers.contracts.serde.decode`): a request id invented by each
reader would answer under an id nobody asked with and break effectively-once. Headers
(``request_id``, ``traceparent``, ``deadline``) are written by ``workers/kafka.py``; serialization lives
in :mod:`workers.contracts.serde`, not here. ``ragstream schema`` writes the JSON Schemas of these models.

Units: every ``*_ms`` field and every value of a ``timings_ms`` map is in milliseconds; token counts are
tokens of the named model's tokenizer.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

#: Version of the wire format written by this code; readers reject other versions (dead letter).
SCHEMA_VERSION = 1
#: Validation context of a message read from the wire (:func:`workers.contracts.serde.decode` passes it): a
#: Request (also the one inside a Prompt) must then carry its ``request_id``.
WIRE_CONTEXT: dict[str, Any] = {"wire": True}


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


class ChatMessage(_Wire):
    """One message of the chat sent to the LLM server (Messages API)."""

    role: Literal["system", "user", "assistant"]
    content: str


#: Earlier turns a Request may carry (``Request.history``), and their total characters.
MAX_HISTORY_MESSAGES = 200
MAX_HISTORY_CHARS = 200_000

#: Marks a Request read from the wire without a ``request_id`` (see ``Request._request_id_on_the_wire``).
_MISSING_ON_THE_WIRE = object()


def _request_id_required(schema: dict[str, Any]) -> None:
    """The JSON Schema of a Request lists ``request_id`` as required: it is on the wire."""
    required = schema.setdefault("required", [])
    if "request_id" not in required:
        required.insert(0, "request_id")


class Request(_Wire):
    """A user's question, produced by a client to the requests topic.

    ``request_id`` is required on the wire (a message without one is dead-lettered with the reason); built in
    Python, a Request gets a fresh UUID when none is given.
    """

    model_config = ConfigDict(json_schema_extra=_request_id_required)

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
    #: The partition the answer goes to, and the token events when ``stream_tokens``: the asking gateway
    #: replica's own partition of the responses topic (or of ``reply_topic``) and of the tokens topic, so that each
    #: replica reads its own replies only. ``None``: partitioned by key (request id) as usual.
    reply_partition: int | None = Field(None, ge=0, le=65_535)
    #: Produce the answer's text as it is generated, as :class:`TokenEvent` records on the tokens topic.
    stream_tokens: bool = False
    session_id: str | None = None
    #: Earlier turns of the conversation, oldest first (the question itself is ``query``); the retriever uses them
    #: for the search query of a short or referring question, and the prompt keeps as many as fit its budget.
    history: list[ChatMessage] = Field(default_factory=list, max_length=MAX_HISTORY_MESSAGES)

    @model_validator(mode="before")
    @classmethod
    def _request_id_on_the_wire(cls, data: Any, info: ValidationInfo) -> Any:
        # On the wire a missing request_id is marked, so that the field's check below reports it among the other
        # errors (loc "request_id") instead of the default factory inventing one.
        wire = isinstance(info.context, dict) and bool(info.context.get("wire"))
        if wire and isinstance(data, dict) and data.get("request_id") is None:
            return {**data, "request_id": _MISSING_ON_THE_WIRE}
        return data

    @field_validator("request_id", mode="before")
    @classmethod
    def _request_id_given(cls, v: Any) -> Any:
        if v is _MISSING_ON_THE_WIRE:
            raise ValueError("missing: a request on the wire must carry its own request id (UUID)")
        return v

    @field_validator("created_at", "deadline")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("datetimes must carry a timezone (UTC)")
        return v

    @field_validator("history")
    @classmethod
    def _history_size(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        total = sum(len(m.content) for m in v)
        if total > MAX_HISTORY_CHARS:
            raise ValueError(f"history of {total} characters is longer than {MAX_HISTORY_CHARS}")
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


#: What a Response says about its request:
#:
#: * ``ok``: the answer;
#: * ``no_context``: the search found no passage (the index is empty for these filters), so no LLM was called;
#:   ``answer`` is a fixed message (``RAG_RETRIEVER__NO_CONTEXT_MESSAGE``), no error;
#: * ``rejected``: the request is invalid (it fails the Request schema, or names an unknown filter field); nothing
#:   was retrieved or generated, and the same request is rejected again (final);
#: * ``error``: a stage failed for good; ``expired``: the deadline passed first; ``model_unavailable``: the LLM
#:   stayed away through the retries (not final: a later redelivery tries again);
#: * ``cancelled``: the client went away (a cancel on the control topic) and generation was stopped (final).
ResponseStatus = Literal["ok", "error", "expired", "model_unavailable", "rejected", "no_context", "cancelled"]
#: Statuses that carry an answer text (the others carry an ``error``).
ANSWER_STATUSES = frozenset({"ok", "no_context"})
#: Statuses that end a request for good: kept in the answer store, never produced again for the request id.
FINAL_STATUSES = frozenset({"ok", "error", "expired", "rejected", "no_context", "cancelled"})


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
        if self.status in ANSWER_STATUSES and self.answer is None:
            raise ValueError(f"a Response with status {self.status!r} must carry an answer")
        if self.status not in ANSWER_STATUSES and self.error is None:
            raise ValueError(f"a Response with status {self.status!r} must carry an error")
        return self


class TokenEvent(_Wire):
    """Text of an answer as it is generated; generator → the asking gateway replica (tokens topic).

    A generation *attempt* streams its text in order: event ``seq`` 0, 1, 2, ... each carries the next ``delta``
    (one or more tokens, batched), starting at character ``offset`` of the attempt's text. The last event of an
    attempt has ``final`` set, with the finish reason and usage. A redelivered prompt (a generator crashed) is
    generated again as a new attempt with a higher number and the same seed; the reader checks that its text
    continues what it already has. The Response on the responses topic stays the authoritative answer.
    """

    schema_version: Literal[1] = 1
    request_id: uuid.UUID
    created_at: datetime = Field(default_factory=utcnow)
    #: Identifies one generation attempt of the request: a later attempt has a higher number (microseconds since
    #: the epoch when it started, at least one more than the replica's previous attempt of the request).
    attempt: int = Field(ge=0)
    seq: int = Field(ge=0, description="Position of this event in its attempt (0 = first).")
    offset: int = Field(0, ge=0, description="Characters of the attempt's text before this delta.")
    delta: str = ""
    tokens: int = Field(0, ge=0, description="Tokens in this delta (as the LLM streamed them).")
    final: bool = False
    finish_reason: str | None = None
    usage: Usage | None = None
    #: With the final event: the passages the answer was generated from, with their text (the Response carries
    #: their ids and scores only), for a chat page to show.
    passages: list[Passage] = Field(default_factory=list)


class CancelEvent(_Wire):
    """Stop working on a request (its client went away); gateway → generators (control topic)."""

    schema_version: Literal[1] = 1
    request_id: uuid.UUID
    created_at: datetime = Field(default_factory=utcnow)
    kind: Literal["cancel"] = "cancel"
    reason: str = Field("client disconnected", max_length=500)


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
    "token_event": TokenEvent,
    "cancel_event": CancelEvent,
}
