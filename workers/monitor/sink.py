"""The monitor stage: decoded events joined into trace rows, written in one transaction per batch, counted.

Used by the faust monitor (:mod:`workers.monitor.app`, events read from the four topics) and, in process, by the
monolith (:class:`MonitorSink` as the stream runner's event recorder: the request, the prompt handed over in
memory, the response and dead letters of each input). Both write the same trace rows. The trace table is reached
through :class:`TraceWriter` (implementation: :class:`workers.adapters.traces.TraceRecorder`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from pydantic import BaseModel

from workers.contracts.errors import ConfigError, PermanentError, RetryableError
from workers.contracts.messages import DeadLetter, Prompt, Request, Response
from workers.contracts.serde import decode
from workers.monitor.join import assemble, bad_message
from workers.monitor.metrics import MonitorMetrics
from workers.monitor.trace import BatchResult, ErrorRecord, KafkaCoords, TraceUpdate
from workers.retry import RetryPolicy
from workers.settings import Settings
from workers.stream.records import Incoming

logger = logging.getLogger(__name__)

Stop = Callable[[], bool]

#: Logical topic → wire model expected on it.
TOPIC_MODELS: dict[str, type[BaseModel]] = {
    "requests": Request,
    "prompts": Prompt,
    "responses": Response,
    "dead_letter": DeadLetter,
}


class TraceWriter(Protocol):
    """The trace table as the monitor stage uses it (implementation: :class:`workers.adapters.traces.TraceRecorder`)."""

    def write_batch(self, updates: Sequence[TraceUpdate], errors: Sequence[ErrorRecord]) -> BatchResult:
        """Write one batch in one transaction.

        Raises:
            RetryableError: the database is briefly unavailable (nothing stored; retry the batch).
            PermanentError: the database rejected the batch (nothing stored).
        """
        ...

    def unanswered(self, now: datetime) -> tuple[int, int]:
        """Requests seen without a response yet, and how many of them are past their deadline."""
        ...


def topic_names(settings: Settings) -> dict[str, str]:
    """Full topic name (prefix included) → logical topic (``requests``, ``prompts``, ...)."""
    return {settings.topics.name(kind): kind for kind in TOPIC_MODELS}  # type: ignore[arg-type]  # literal keys


@dataclass
class MonitorSink:
    """Turns a batch of Kafka events into one database transaction and counts what changed.

    Args:
        recorder: the PostgreSQL sink.
        metrics: the metrics bundle.
        topics: full topic name → logical topic (see :func:`topic_names`).
    """

    recorder: TraceWriter
    metrics: MonitorMetrics
    topics: dict[str, str]
    #: Retries of a batch write that failed transiently (the ``database`` policy of ``workers/retry.py``).
    retry: RetryPolicy = RetryPolicy(720, 0.5, 10.0)

    def assemble_batch(
        self, messages: Sequence[tuple[KafkaCoords, bytes | None]]
    ) -> tuple[list[TraceUpdate], list[ErrorRecord]]:
        """Decode and join a batch; a message that cannot be decoded becomes an error record.

        Args:
            messages: ``(coords, raw value)`` in reading order.

        Returns:
            ``(updates, errors)``. Never raises: any failure on one message is recorded for that message.
        """
        updates: list[TraceUpdate] = []
        errors: list[ErrorRecord] = []
        for coords, raw in messages:
            kind = self.topics.get(coords.topic)
            try:
                if kind is None:
                    raise ConfigError(f"message from unexpected topic {coords.topic!r}")
                joined = assemble(decode(raw, TOPIC_MODELS[kind]), coords)  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 - every failure becomes an error record, none escapes
                logger.warning(
                    "bad message topic=%s partition=%d offset=%d error_class=%s error=%s",
                    coords.topic,
                    coords.partition,
                    coords.offset,
                    getattr(exc, "error_class", type(exc).__name__),
                    exc,
                )
                errors.append(bad_message(raw, coords, exc))
                continue
            if joined.update is not None:
                updates.append(joined.update)
            if joined.error is not None:
                errors.append(joined.error)
        return updates, errors

    def write(self, updates: list[TraceUpdate], errors: list[ErrorRecord]) -> BatchResult:
        """Write one batch; when the database rejects it (not a transient failure), isolate the bad events.

        Each update that the database still rejects on its own is replaced by an error record
        (error class ``db_rejected``), so one poisonous event cannot block the partition.

        Args:
            updates: the batch's trace updates.
            errors: the batch's error records.

        Returns:
            What changed (for the metrics).

        Raises:
            RetryableError: transient failure; retry the batch.
            PermanentError: even the error records could not be stored; retry the batch.
        """
        try:
            return self.recorder.write_batch(updates, errors)
        except PermanentError as exc:
            logger.warning("batch rejected by the database, writing events one by one: %s", exc)
        combined = BatchResult()
        rejected: list[ErrorRecord] = []
        for upd in updates:
            try:
                res = self.recorder.write_batch([upd], [])
            except PermanentError as exc:
                logger.error(
                    "trace update rejected request_id=%s topic=%s partition=%d offset=%d error=%s",
                    upd.request_id,
                    upd.last.topic,
                    upd.last.partition,
                    upd.last.offset,
                    exc,
                )
                rejected.append(_rejected(upd, exc))
                continue
            combined.changes.extend(res.changes)
        res = self.recorder.write_batch([], [*errors, *rejected])
        combined.errors_inserted.extend(res.errors_inserted)
        return combined

    def record(self, result: BatchResult) -> None:
        """Count a committed batch's changes in the metrics."""
        self.metrics.record(result, topic_kinds=self.topics)

    async def write_retrying(
        self, updates: list[TraceUpdate], errors: list[ErrorRecord], *, events: int, stop: Stop | None = None
    ) -> BatchResult:
        """:meth:`write` in a worker thread, retried with the sink's policy while the database is away; then
        the batch's changes are counted.

        Args:
            updates: the batch's trace updates.
            errors: the batch's error records.
            events: events in the batch (for the metrics and logs).
            stop: retried no more once it returns True.

        Raises:
            RetryableError, PermanentError: the write still failed after the policy's attempts.
        """

        def on_retry(exc: BaseException, attempt: int, sleep_s: float) -> None:
            self.metrics.write_failures.inc()
            logger.warning("batch write failed events=%d attempt=%d retry_in_s=%.1f error=%s",
                           events, attempt, sleep_s, exc)  # fmt: skip

        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await self.retry.call(
            lambda: asyncio.to_thread(self.write, updates, errors), on_retry=on_retry, stop=stop
        )
        self.metrics.batch_write.observe(loop.time() - started)
        self.metrics.batch_size.observe(events)
        self.record(result)
        return result

    async def record_events(self, events: Sequence[tuple[Request | Prompt | Response | DeadLetter, Incoming]]) -> None:
        """The stream runner's event recorder (the monolith's in-process monitor stage): join and write the events
        of a micro-batch in one transaction, with the input record's coordinates.

        Never raises: a failure after the retries is logged and counted (the answers are produced anyway; the
        trace rows of this batch are incomplete).
        """
        updates: list[TraceUpdate] = []
        errors: list[ErrorRecord] = []
        for event, inc in events:
            joined = assemble(event, KafkaCoords(inc.topic, inc.partition, inc.offset))
            if joined.update is not None:
                updates.append(joined.update)
            if joined.error is not None:
                errors.append(joined.error)
        try:
            await self.write_retrying(updates, errors, events=len(events))
        except (RetryableError, PermanentError) as exc:
            self.metrics.write_failures.inc()
            logger.error("trace rows not written events=%d: %s", len(events), exc)

    def refresh_gauges(self) -> int:
        """Refresh the in-flight and past-deadline gauges from the trace table.

        Returns:
            Requests past their deadline without an answer.

        Raises:
            Exception: the query failed (the caller logs it and tries again at the next tick).
        """
        in_flight, overdue = self.recorder.unanswered(datetime.now(UTC))
        self.metrics.in_flight.set(in_flight)
        self.metrics.past_deadline.set(overdue)
        return overdue


def _rejected(upd: TraceUpdate, exc: BaseException) -> ErrorRecord:
    coords = upd.last
    return ErrorRecord(
        kind="bad_message",
        source_topic=coords.topic,
        source_partition=coords.partition,
        source_offset=coords.offset,
        stage="monitor",
        error_class="db_rejected",
        error_message=f"{type(exc).__name__}: {exc}".replace("\x00", "\\0")[:4000],
        request_id=upd.request_id,
        seen=coords,
        value_b64=None,
    )
