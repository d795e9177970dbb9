"""The one producer wrapper: an idempotent confluent-kafka ``Producer`` created lazily, used as a context manager.

Every place that produces goes through :class:`KafkaProducer` (the worker loop, the client, replay, dead-letter
replay, the chaos harness and the tests). What it adds to the bare client (STYLE.md §3):

* the client is built on first use from :func:`workers.kafka.config.producer_config` (idempotent, ``acks=all``);
* a full local queue (``BufferError``, the one known-transient local error) is retried, serving delivery
  reports between tries, for at most ``max_wait_s`` seconds, then re-raised: nothing waits forever;
* ``poll(0)`` after each produce serves delivery reports promptly (off for the worker loop, whose own thread
  serves them);
* ``close()`` (or leaving the ``with`` block) flushes within a bound and returns what was left undelivered;
* a message for an explicit partition (a gateway replica's reply partition, named in the request) goes there only
  when the topic has that partition (metadata cached for a minute); otherwise it is partitioned by its key and a
  warning is logged, so a wrong partition number in a request never fails a worker's delivery.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from workers.kafka.config import producer_config
from workers.settings import KafkaSettings

#: A delivery report callback: ``(error or None, message)``.
DeliveryCallback = Callable[[KafkaError | None, Message], None]
#: Header forms accepted by :meth:`KafkaProducer.produce`.
Headers = Mapping[str, str | bytes | None] | list[tuple[str, str | bytes | None]]
#: Seconds a topic's partition count is cached for the check of explicit partitions.
PARTITIONS_TTL_S = 60.0

log = logging.getLogger(__name__)


class KafkaProducer:
    """An idempotent producer, created lazily.

    Args:
        kafka: connection settings.
        max_wait_s: longest time (s) one ``produce`` waits for room in a full local queue before it re-raises
            ``BufferError``.
        poll_after_produce: call ``poll(0)`` after each produce to serve delivery reports (False when another
            thread serves them, as in the worker loop).
        overrides: librdkafka properties over :func:`producer_config`'s (e.g. ``{"linger.ms": 0}``).
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        max_wait_s: float = 60.0,
        poll_after_produce: bool = True,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self._conf = producer_config(kafka, **dict(overrides or {}))
        self.max_wait_s = max_wait_s
        self.poll_after_produce = poll_after_produce
        self._client: Producer | None = None
        self._partitions: dict[str, tuple[int, float]] = {}

    @property
    def client(self) -> Producer:
        """The confluent-kafka ``Producer`` (created on first use)."""
        if self._client is None:
            self._client = Producer(self._conf)
        return self._client

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | str | None = None,
        headers: Headers | None = None,
        on_delivery: DeliveryCallback | None = None,
        *,
        on_wait: Callable[[], None] | None = None,
        partition: int | None = None,
    ) -> None:
        """Queue one message; on a full queue serve delivery reports and try again (bounded).

        Args:
            topic: target topic.
            value: value bytes.
            key: message key.
            headers: header name → value (or a list of pairs).
            on_delivery: delivery report callback.
            on_wait: called each time the queue is full, before waiting (progress checks, counters); may raise
                to give up.
            partition: the partition to produce to (``None``: from the key); one the topic does not have is
                ignored with a warning (the key decides).

        Raises:
            BufferError: the queue stayed full for ``max_wait_s`` seconds.
            KafkaException: the message was refused locally (e.g. larger than ``message.max.bytes``).
        """
        partition = self._checked_partition(topic, partition)
        deadline = time.monotonic() + self.max_wait_s
        while not self._attempt(topic, value, key, headers, on_delivery, deadline, partition):
            if on_wait is not None:
                on_wait()
            self.client.poll(0.05)

    async def produce_async(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | str | None = None,
        headers: Headers | None = None,
        on_delivery: DeliveryCallback | None = None,
        *,
        partition: int | None = None,
    ) -> None:
        """:meth:`produce` for asyncio code: a full queue is waited out with ``asyncio.sleep`` (the event loop goes
        on), while another thread serves the delivery reports. The partition check's metadata request, when the
        count is not cached, runs in a thread.

        Raises:
            BufferError: the queue stayed full for ``max_wait_s`` seconds.
            KafkaException: the message was refused locally.
        """
        if partition is not None and not self._cached_count(topic):
            await asyncio.get_running_loop().run_in_executor(None, self.partition_count, topic)
        partition = self._checked_partition(topic, partition)
        deadline = time.monotonic() + self.max_wait_s
        while not self._attempt(topic, value, key, headers, on_delivery, deadline, partition):
            await asyncio.sleep(0.01)

    def partition_count(self, topic: str, timeout_s: float = 5.0) -> int:
        """Partitions of ``topic`` (cached for :data:`PARTITIONS_TTL_S` seconds); 0 when the broker does not say.

        Blocking (a metadata request) when the count is not cached.
        """
        cached = self._cached_count(topic)
        if cached:
            return cached
        try:
            meta = self.client.list_topics(topic, timeout=timeout_s).topics.get(topic)
        except KafkaException as exc:
            log.warning("partitions of topic=%s unknown: %s", topic, exc)
            return 0
        n = len(meta.partitions) if meta is not None and meta.error is None else 0
        if n:
            self._partitions[topic] = (n, time.monotonic())
        return n

    def _cached_count(self, topic: str) -> int:
        hit = self._partitions.get(topic)
        return hit[0] if hit is not None and time.monotonic() - hit[1] < PARTITIONS_TTL_S else 0

    def _checked_partition(self, topic: str, partition: int | None) -> int | None:
        """``partition`` when ``topic`` has it, else ``None`` (with a warning): the key decides then."""
        if partition is None:
            return None
        n = self.partition_count(topic)
        if 0 <= partition < n:
            return partition
        log.warning("topic=%s has %d partitions, not partition %d; producing by key instead", topic, n, partition)
        return None

    def _attempt(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | str | None,
        headers: Headers | None,
        on_delivery: DeliveryCallback | None,
        deadline: float,
        partition: int | None = None,
    ) -> bool:
        """One try: True when queued (then ``poll(0)`` if asked), False on a full queue before ``deadline``.

        Raises:
            BufferError: the queue is full and ``deadline`` (monotonic seconds) has passed.
        """
        hdrs = list(headers.items()) if isinstance(headers, Mapping) else headers
        extra: dict[str, Any] = {} if partition is None else {"partition": partition}
        try:
            self.client.produce(topic, value=value, key=key, headers=hdrs, on_delivery=on_delivery, **extra)
        except BufferError:
            if time.monotonic() > deadline:
                raise
            return False
        if self.poll_after_produce:
            self.client.poll(0)
        return True

    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery reports for up to ``timeout_s`` seconds; returns how many were served."""
        return int(self.client.poll(timeout_s))

    def flush(self, timeout_s: float = 10.0) -> int:
        """Wait up to ``timeout_s`` seconds for queued messages to be delivered; returns how many are left."""
        if self._client is None:
            return 0
        return int(self._client.flush(timeout_s))

    def __len__(self) -> int:
        """Messages queued and not yet confirmed by a delivery report."""
        return 0 if self._client is None else len(self._client)

    def close(self, timeout_s: float = 10.0) -> int:
        """Flush within ``timeout_s`` seconds; returns the messages left undelivered."""
        return self.flush(timeout_s)

    def __enter__(self) -> KafkaProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
