"""Group-less reads: consumers that are *assigned* partitions at chosen offsets and never join their group.

Used wherever ragstream reads a topic without being one of its consumer group's members: the client (the
responses topic from its high watermark on), the evaluation tools (a topic from its low to its high watermark:
evaluate, dlq, shadow's answer counter, replay), the chaos harness and the tests. Nothing is committed, so no
live group's offsets move (:func:`workers.kafka.config.reader_config`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message, TopicPartition

from workers.contracts.errors import ConfigError, RetryableError
from workers.contracts.serde import headers_to_dict
from workers.kafka.config import reader_config
from workers.settings import KafkaSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicRecord:
    """One record read from a topic: value bytes, Kafka timestamp (ms since the epoch), headers, position."""

    value: bytes | None
    timestamp_ms: int | None
    headers: Mapping[str, str]
    partition: int = 0
    offset: int = 0


def reader(kafka: KafkaSettings, purpose: str = "read", **overrides: Any) -> Consumer:
    """A group-less consumer (:func:`workers.kafka.config.reader_config`); close it when done."""
    return Consumer(reader_config(kafka, purpose, **overrides))


#: Errors of a partition whose leader is not elected yet (a topic created a moment ago): asked again.
_NO_LEADER_YET = frozenset(
    {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART}
)


def watermarks(consumer: Consumer, topic: str, *, timeout_s: float = 10.0) -> dict[int, tuple[int, int]]:
    """Low and high watermark of every partition of ``topic``: ``{partition: (low, high)}`` (high = next offset).

    A partition whose leader is not elected yet (a topic created a moment ago) is asked again until
    ``timeout_s`` has passed.

    Raises:
        ConfigError: the topic does not exist (or has no partitions).
        KafkaException: the broker kept refusing (other errors, or a leader still missing after ``timeout_s``).
    """
    meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        reason = meta.error.str() if meta is not None and meta.error is not None else "no partitions"
        raise ConfigError(f"topic {topic!r} not found: {reason}")
    out: dict[int, tuple[int, int]] = {}
    deadline = time.monotonic() + timeout_s
    for p in sorted(meta.partitions):
        while True:
            try:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s, cached=False)
                break
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                code = err.code() if isinstance(err, KafkaError) else None
                if code not in _NO_LEADER_YET or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        out[p] = (low, high)
    return out


def assign_at(
    consumer: Consumer, topic: str, at: Literal["low", "high"], *, timeout_s: float = 10.0
) -> dict[int, tuple[int, int]]:
    """Assign every partition of ``topic`` at its low watermark (read all) or high watermark (read what comes).

    Returns:
        The watermarks seen, as :func:`watermarks` returns them.

    Raises:
        ConfigError: the topic does not exist.
    """
    marks = watermarks(consumer, topic, timeout_s=timeout_s)
    consumer.assign([TopicPartition(topic, p, lo if at == "low" else hi) for p, (lo, hi) in marks.items()])
    return marks


def record_of(msg: Message) -> TopicRecord:
    """A consumed message as a :class:`TopicRecord` (headers decoded, timestamp ``None`` when absent)."""
    ts_type, ts = msg.timestamp()
    headers = headers_to_dict(msg.headers())  # type: ignore[arg-type]  # consumed headers are a list
    return TopicRecord(msg.value(), ts if ts_type else None, headers, msg.partition() or 0, msg.offset() or 0)


def read_topic(kafka: KafkaSettings, topic: str, *, timeout_s: float = 120.0) -> list[TopicRecord]:
    """Every record of a topic up to the high watermarks captured at the start, without a consumer group.

    The partitions are *assigned* at their low watermarks (``assign``, no ``subscribe``), nothing is
    committed, and the throwaway ``group.id`` librdkafka wants is never joined.

    Args:
        kafka: connection settings.
        topic: the topic.
        timeout_s: seconds allowed to read the range.

    Raises:
        ConfigError: the topic does not exist.
        RetryableError: the range was not read within ``timeout_s``.
    """
    consumer = reader(kafka, "read", **{"enable.partition.eof": True})
    try:
        try:
            marks = watermarks(consumer, topic)
        except ConfigError:
            raise ConfigError(f"topic {topic!r} not found (wrong run name or prefix?)") from None
        ends = {p: high for p, (low, high) in marks.items() if high > low}
        out: list[TopicRecord] = []
        if not ends:
            return out
        consumer.assign([TopicPartition(topic, p, marks[p][0]) for p in ends])
        deadline = time.monotonic() + timeout_s
        while ends:
            if time.monotonic() > deadline:
                raise RetryableError(
                    f"reading {topic!r} took longer than {timeout_s:.0f} s (partitions left {sorted(ends)})"
                )
            for msg in consumer.consume(500, timeout=0.5):
                p = msg.partition()
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF and p in ends and (msg.offset() or 0) >= ends[p]:
                        del ends[p]
                    continue
                if p not in ends:
                    continue
                offset = msg.offset() or 0
                if offset < ends[p]:
                    out.append(record_of(msg))
                if offset >= ends[p] - 1:
                    del ends[p]
        log.info("read topic=%s records=%d", topic, len(out))
        return out
    finally:
        consumer.close()


def consume_available(consumer: Consumer, n: int, timeout_s: float) -> list[Message]:
    """Up to ``n`` messages without waiting for a full batch.

    ``Consumer.consume(n, timeout)`` blocks until it has ``n`` messages *or* the timeout passed, which adds the
    whole timeout to every message at low load. This takes what is already fetched (timeout 0); only when
    nothing is there does it block for the first message, then drains what arrived with it.
    """
    msgs = consumer.consume(n, 0)
    if msgs:
        return list(msgs)
    first = consumer.consume(1, timeout_s)
    if not first or n == 1:
        return list(first)
    return list(first) + list(consumer.consume(n - 1, 0))


def committed_offsets(
    consumer: Consumer, partitions: list[TopicPartition], timeout_s: float = 10.0
) -> dict[tuple[str, int], int]:
    """Committed offsets of a group as ``{(topic, partition): offset}`` (``-1001`` = none committed)."""
    out: dict[tuple[str, int], int] = {}
    for tp in consumer.committed(partitions, timeout=timeout_s):
        out[(tp.topic, tp.partition)] = tp.offset if tp.offset != OFFSET_INVALID else -1001
    return out
