"""Transport-neutral records: a consumed input, an output to produce, headers, dead letters.

The stream runner (:mod:`workers.stream.runner`) turns :class:`Incoming` records into :class:`Output` records;
the Kafka worker loop (:mod:`workers.kafka.loop`) builds the former from consumed messages and produces the
latter. Nothing here imports a Kafka client: a record is plain data (topic, partition, offset, key, value bytes,
headers), so the runner and the stages can be used and tested without a broker.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from workers.contracts.errors import RagError
from workers.contracts.messages import DeadLetter
from workers.contracts.serde import encode

#: Raw bytes of a failed message kept in its dead letter (512 KiB: base64 makes it ~700 KB, so a dead letter fits
#: a broker's default 1 MiB ``message.max.bytes``). A longer value is cut there and flagged ``value_truncated``
#: with its full length in ``value_bytes`` (such a dead letter cannot be replayed to its source).
DEAD_LETTER_MAX_VALUE_BYTES = 512 * 1024

#: Header names carried from input to output (DESIGN.md §4).
PROPAGATED_HEADERS = ("request_id", "traceparent", "deadline")


@dataclass(frozen=True)
class Incoming:
    """One consumed message as the handler sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    timestamp_ms: int
    #: Monotonic time (s) the loop received it, for queue-time measurements.
    received_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Output:
    """A message to produce for an input: topic, key, value bytes, headers and, when it must go to one, the
    partition (a gateway replica's reply partition; ``None``: chosen from the key)."""

    topic: str
    value: bytes
    key: bytes | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    partition: int | None = None


def output_headers(incoming: Incoming, **extra: str) -> dict[str, str]:
    """Headers for an output: the propagated ones of the input (request_id, traceparent, deadline) + extra."""
    out = {k: v for k, v in incoming.headers.items() if k in PROPAGATED_HEADERS}
    out.update(extra)
    return out


def error_class_of(error: BaseException) -> str:
    """The short error class written into dead letters and error answers: ``RagError.error_class``, else the
    exception type's name."""
    return error.error_class if isinstance(error, RagError) else type(error).__name__


def _uuid(value: object) -> uuid.UUID | None:
    if not isinstance(value, str):
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def readable_request_id(incoming: Incoming) -> uuid.UUID | None:
    """The request id of a message that failed validation, when it can be read.

    The body's ``request_id`` (a JSON object with a UUID string there) is preferred; else the ``request_id``
    header. Nothing else of the message is trusted: the caller answers this id with a ``rejected`` Response on the
    responses topic (not on a reply topic the invalid message names) so a waiting client is not left to its timeout.

    Returns:
        ``None`` when neither the body nor the header names a valid UUID.
    """
    body: object = None
    if incoming.value:
        try:
            body = json.loads(incoming.value)
        except (ValueError, UnicodeDecodeError, RecursionError):  # not JSON, not UTF-8, nested past the limit
            body = None
    fields = body if isinstance(body, dict) else {}
    return _uuid(fields.get("request_id")) or _uuid(incoming.headers.get("request_id"))


def dead_letter_of(
    incoming: Incoming,
    *,
    stage: str,
    error: BaseException,
    attempts: int = 1,
    request_id: uuid.UUID | None = None,
    first_failure_at: datetime | None = None,
) -> DeadLetter:
    """The :class:`DeadLetter` of an input that a stage could not process.

    It carries the raw value (base64, at most :data:`DEAD_LETTER_MAX_VALUE_BYTES`), the source
    topic/partition/offset and key, the error class and message, the stage and attempts. The request id is
    ``request_id``, else the input's ``request_id`` header when it is a UUID. An input sent back from the
    dead-letter topic (``ragstream dlq replay``) carries the attempts so far (header ``dlq_attempts``) and its
    first failure time (``dlq_first_failure_at``): the new dead letter counts on from them.
    """
    now = datetime.now(UTC)
    earlier = _int_header(incoming.headers.get("dlq_attempts"))
    attempts += earlier
    if earlier and first_failure_at is None:
        first_failure_at = _time_header(incoming.headers.get("dlq_first_failure_at"))
    rid = request_id
    if rid is None:
        try:
            rid = uuid.UUID(incoming.headers.get("request_id", ""))
        except ValueError:
            rid = None
    raw = incoming.value or b""
    return DeadLetter(
        request_id=rid,
        source_topic=incoming.topic,
        partition=incoming.partition,
        offset=incoming.offset,
        key=base64.b64encode(incoming.key).decode("ascii") if incoming.key is not None else None,
        value_b64=base64.b64encode(raw[:DEAD_LETTER_MAX_VALUE_BYTES]).decode("ascii"),
        value_bytes=len(raw),
        value_truncated=len(raw) > DEAD_LETTER_MAX_VALUE_BYTES,
        headers=incoming.headers,
        error_class=error_class_of(error),
        error_message=str(error)[:2000] or type(error).__name__,
        stage=stage,
        attempts=attempts,
        first_failure_at=first_failure_at or now,
        last_failure_at=now,
    )


def _int_header(value: str | None) -> int:
    """A non-negative integer header, 0 when absent or not a number."""
    try:
        return max(0, int(value or 0))
    except ValueError:
        return 0


def _time_header(value: str | None) -> datetime | None:
    """An ISO 8601 time header with a timezone, ``None`` when absent or not such a time."""
    try:
        dt = datetime.fromisoformat(value or "")
    except ValueError:
        return None
    return dt if dt.tzinfo is not None else None


def dead_letter_output(incoming: Incoming, letter: DeadLetter, topic: str) -> Output:
    """The :class:`Output` that produces ``letter`` to the dead-letter ``topic`` (key and headers of the input)."""
    return Output(
        topic=topic,
        value=encode(letter),
        key=incoming.key,
        headers=output_headers(incoming, error_class=letter.error_class, stage=letter.stage),
    )


def dead_letter(
    incoming: Incoming,
    *,
    topic: str,
    stage: str,
    error: BaseException,
    attempts: int = 1,
    request_id: uuid.UUID | None = None,
    first_failure_at: datetime | None = None,
) -> Output:
    """The dead-letter :class:`Output` for an input that a stage could not process (:func:`dead_letter_of`)."""
    letter = dead_letter_of(
        incoming, stage=stage, error=error, attempts=attempts, request_id=request_id, first_failure_at=first_failure_at
    )
    return dead_letter_output(incoming, letter, topic)


Handler = Callable[[list[Incoming]], Awaitable[Sequence[Sequence[Output]]]]
