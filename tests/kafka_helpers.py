"""Helpers shared by tests that talk to the real broker: produce, drain a topic, committed offsets."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

from confluent_kafka import Consumer, TopicPartition

from workers.kafka.producer import KafkaProducer
from workers.settings import KafkaSettings


def produce(bootstrap: str, topic: str, values: Iterable[tuple[str | None, bytes | None]]) -> int:
    """Produce ``(key, value)`` pairs and wait for delivery; returns how many were sent."""
    n = 0
    with KafkaProducer(KafkaSettings(bootstrap_servers=bootstrap)) as p:
        for key, value in values:
            p.produce(topic, value, key)
            n += 1
        assert p.flush(30) == 0
    return n


def drain(bootstrap: str, topic: str, want: int, timeout_s: float = 60.0, settle_s: float = 1.0) -> list[bytes]:
    """Read a topic from the start until ``want`` values arrived (or timeout), then ``settle_s`` more seconds
    to catch duplicates. No consumer group is left behind with offsets (nothing is committed)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"drain-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    c.subscribe([topic])
    out: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < want and time.monotonic() < deadline:
        out.extend(m.value() for m in c.consume(100, timeout=0.2) if m.error() is None)
    end = time.monotonic() + settle_s
    while time.monotonic() < end:
        out.extend(m.value() for m in c.consume(100, timeout=0.2) if m.error() is None)
    c.close()
    return out


def committed_and_end(bootstrap: str, group: str, topic: str, partitions: int) -> tuple[list[int], list[int]]:
    """The group's committed offsets (0 for none) and the end offsets of each partition of ``topic``."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    parts = [TopicPartition(topic, i) for i in range(partitions)]
    committed = [tp.offset if tp.offset >= 0 else 0 for tp in c.committed(parts, timeout=10)]
    ends = [c.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
    c.close()
    return committed, ends
