"""A gateway replica's replies: one partition of the tokens and responses topics, read without a consumer group.

:class:`ReplyReader` *assigns* partition ``p`` of each topic at its high watermark (only replies to requests this
replica sends from now on matter) and reads in a thread, handing each batch of records to a callback; nothing is
committed and no group is joined, so replicas never rebalance and each reads only its own partition.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from confluent_kafka import TopicPartition

from workers.contracts.errors import ConfigError
from workers.kafka.reader import TopicRecord, consume_available, reader, record_of, watermarks
from workers.settings import KafkaSettings

log = logging.getLogger(__name__)


class ReplyReader:
    """Reads partition ``partition`` of ``topics`` from their ends in a thread (see the module docstring).

    Args:
        kafka: connection settings.
        topics: the topics (the tokens and responses topics, prefix applied).
        partition: the partition to read of each.
        on_records: called in the reader's thread with each batch of ``(topic, record)``.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: list[str],
        partition: int,
        on_records: Callable[[list[tuple[str, TopicRecord]]], None],
    ) -> None:
        self.topics = topics
        self.partition = partition
        self.on_records = on_records
        self.consumer = reader(kafka, "gateway", **{"fetch.wait.max.ms": 5, "fetch.error.backoff.ms": 50})
        self.records = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gateway-replies", daemon=True)

    def start(self) -> None:
        """Assign the partitions at their high watermarks and start reading.

        Raises:
            ConfigError: a topic is missing or has no partition ``partition``.
        """
        assignment: list[TopicPartition] = []
        for topic in self.topics:
            marks = watermarks(self.consumer, topic)
            if self.partition not in marks:
                raise ConfigError(
                    f"topic {topic!r} has {len(marks)} partitions, so no partition {self.partition} for this gateway "
                    "replica: give each replica a partition below the count (RAG_GATEWAY__REPLY_PARTITION), or add "
                    "partitions to the topic"
                )
            assignment.append(TopicPartition(topic, self.partition, marks[self.partition][1]))
        self.consumer.assign(assignment)
        self._thread.start()
        log.info("gateway replies partition=%d topics=%s", self.partition, ",".join(self.topics))

    def alive(self) -> bool:
        """True while the reading thread runs."""
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msgs = consume_available(self.consumer, 500, 0.1)
            except Exception as exc:  # the broker away: librdkafka reconnects; keep polling
                log.warning("reading replies failed: %s", exc)
                self._stop.wait(0.5)
                continue
            batch = [(m.topic() or "", record_of(m)) for m in msgs if m.error() is None]
            if batch:
                self.records += len(batch)
                try:
                    self.on_records(batch)
                except Exception:  # a bad callback must not end the reader
                    log.exception("reply callback failed")

    def stop(self) -> None:
        """Stop reading and close the consumer."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        self.consumer.close()
