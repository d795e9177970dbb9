"""The trace row's vocabulary: event kinds, the columns each kind owns, and the records the monitor stage
passes around (coordinates, parts, updates, error records, changes). Pure data, no I/O.

:mod:`workers.monitor.join` builds and merges these from decoded events; :mod:`workers.adapters.traces` writes them.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

EventKind = Literal["request", "prompt", "response", "dead_letter"]
ErrorKind = Literal["bad_message", "dead_letter"]

#: The four event kinds, in pipeline order.
KINDS: tuple[EventKind, ...] = ("request", "prompt", "response", "dead_letter")

#: Column-name prefix of each kind's version columns (``<prefix>_sig``, ``<prefix>_created_at``).
_PREFIX: dict[EventKind, str] = {"request": "request", "prompt": "prompt", "response": "response", "dead_letter": "dl"}

#: Version columns of each kind: the content hash and the event's ``created_at``.
SIG_COLUMN: dict[EventKind, str] = {k: f"{p}_sig" for k, p in _PREFIX.items()}
AT_COLUMN: dict[EventKind, str] = {k: f"{p}_created_at" for k, p in _PREFIX.items()}

#: Data columns each kind owns (version columns excluded).
DATA_COLUMNS: dict[EventKind, tuple[str, ...]] = {
    "request": ("query", "top_k", "filters", "generation", "deadline", "session_id", "reply_topic"),
    "prompt": (
        "passages",
        "messages",
        "template_id",
        "template_hash",
        "prompt_tokens",
        "max_new_tokens",
        "passages_dropped",
        "query_tokens",
        "query_truncated",
        "embedding_model",
        "prompt_timings_ms",
    ),
    "response": (
        "response_status",
        "answer",
        "finish_reason",
        "model_id",
        "model_revision",
        "usage_prompt_tokens",
        "usage_completion_tokens",
        "usage_total_tokens",
        "sources",
        "response_timings_ms",
        "response_error_class",
        "response_error_message",
        "response_error_stage",
        "attempts",
    ),
    "dead_letter": (
        "dl_error_class",
        "dl_error_message",
        "dl_stage",
        "dl_source_topic",
        "dl_source_partition",
        "dl_source_offset",
        "dl_attempts",
    ),
}

#: Every column a kind writes: version columns first, then data columns.
OWNED_COLUMNS: dict[EventKind, tuple[str, ...]] = {k: (SIG_COLUMN[k], AT_COLUMN[k], *DATA_COLUMNS[k]) for k in KINDS}

#: Columns stored as jsonb.
JSON_COLUMNS: frozenset[str] = frozenset(
    {"filters", "generation", "passages", "messages", "prompt_timings_ms", "sources", "response_timings_ms"}
)

#: Columns of the stored row that :func:`resolve` needs to detect changes.
STATE_COLUMNS: tuple[str, ...] = (
    *(SIG_COLUMN[k] for k in KINDS),
    *(AT_COLUMN[k] for k in KINDS),
    "response_status",
    "response_error_class",
    "response_error_stage",
    "dl_error_class",
    "dl_stage",
    "prompt_timings_ms",
    "response_timings_ms",
)

#: Stage labels of the latency histograms.
STAGES: tuple[str, ...] = ("embed", "search", "prompt", "queue", "llm_ttft", "llm_total", "end_to_end")

STAGE_ALIASES: dict[str, str] = {
    "ttft": "llm_ttft",
    "llm": "llm_total",
    "generate": "llm_total",
    "generation": "llm_total",
    "total": "end_to_end",
    "e2e": "end_to_end",
    "embedding": "embed",
    "retrieve": "search",
    "retrieval": "search",
}

#: Raw values kept in the errors table are cut to this many bytes (before base64).
MAX_RAW_BYTES = 1_000_000

#: Stage name written into error records of messages the monitor itself could not parse.
MONITOR_STAGE = "monitor"


@dataclass(frozen=True)
class KafkaCoords:
    """Where one Kafka message was read: topic, partition and offset."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Part:
    """The columns one event kind owns in a trace row, with the event's version and coordinates.

    Attributes:
        kind: the event kind that owns ``values``.
        sig: hex SHA-256 (32 characters) of the event's canonical JSON; equal events have equal sigs.
        at: the event's ``created_at`` (UTC).
        coords: where the event was read.
        values: column name → value for every column in ``DATA_COLUMNS[kind]`` (jsonb columns as Python
            dicts/lists).
    """

    kind: EventKind
    sig: str
    at: datetime
    coords: KafkaCoords
    values: Mapping[str, Any]

    @property
    def version(self) -> tuple[datetime, str]:
        """Total order of parts of one kind: later ``created_at`` wins, the sig breaks ties."""
        return (self.at, self.sig)

    def columns(self) -> dict[str, Any]:
        """All columns this part writes (version columns included)."""
        return {SIG_COLUMN[self.kind]: self.sig, AT_COLUMN[self.kind]: self.at, **self.values}


@dataclass(frozen=True)
class TraceUpdate:
    """What one or more events contribute to the trace row of ``request_id``.

    Attributes:
        request_id: the trace's key.
        parts: at most one part per kind.
        last: coordinates of the last event merged into this update (written as the row's last event).
    """

    request_id: uuid.UUID
    parts: Mapping[EventKind, Part]
    last: KafkaCoords

    @property
    def kinds(self) -> frozenset[EventKind]:
        """The kinds this update carries."""
        return frozenset(self.parts)

    def merge(self, other: TraceUpdate) -> TraceUpdate:
        """Combine with a later update of the same request id (per kind, the greater version wins).

        Args:
            other: an update read after this one.

        Returns:
            The merged update; ``last`` is ``other.last``.

        Raises:
            ValueError: the request ids differ.
        """
        if other.request_id != self.request_id:
            raise ValueError(f"cannot merge traces of {self.request_id} and {other.request_id}")
        parts = dict(self.parts)
        for kind, part in other.parts.items():
            mine = parts.get(kind)
            if mine is None or part.version > mine.version:
                parts[kind] = part
        return TraceUpdate(self.request_id, parts, other.last)


@dataclass(frozen=True)
class ErrorRecord:
    """One row of the errors table: a dead letter, or a message the monitor could not parse.

    Keyed by ``(source_topic, source_partition, source_offset, stage)``: the message the error is about
    (for a dead letter the failed input named in it, for a bad message the message itself) and the stage
    that failed (``"monitor"`` for bad messages).
    """

    kind: ErrorKind
    source_topic: str
    source_partition: int
    source_offset: int
    stage: str
    error_class: str
    error_message: str
    request_id: uuid.UUID | None
    seen: KafkaCoords
    value_b64: str | None
    attempts: int = 1
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class Joined:
    """What one decoded event yields: a trace update, an error record, or both (a dead letter)."""

    update: TraceUpdate | None = None
    error: ErrorRecord | None = None


@dataclass(frozen=True)
class TraceChange:
    """How a trace row changed when an update was applied (input for the metrics).

    Attributes:
        request_id: the trace's key.
        new_kinds: kinds seen for this request id for the first time.
        status: the new ``response_status`` when it changed (``None``: unchanged).
        error: the new effective ``(error_class, stage)`` when it changed to a non-null value.
        latencies_s: stage → seconds to observe (only when the response or end-to-end time is first known).
    """

    request_id: uuid.UUID
    new_kinds: frozenset[EventKind] = frozenset()
    status: str | None = None
    error: tuple[str, str] | None = None
    latencies_s: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchResult:
    """What one batch write of the trace table changed (``TraceRecorder.write_batch``).

    Attributes:
        changes: one entry per trace row that was inserted or changed (redeliveries are absent).
        errors_inserted: the error records that were new (already-stored ones are absent).
    """

    changes: list[TraceChange] = field(default_factory=list)
    errors_inserted: list[ErrorRecord] = field(default_factory=list)

    @property
    def rows_changed(self) -> int:
        """Number of trace rows inserted or changed."""
        return len(self.changes)
