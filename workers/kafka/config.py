"""librdkafka properties of every client ragstream builds: workers, producers, group-less readers.

One place builds them (STYLE.md §1): :func:`base_config` (bootstrap servers, ``kafka.extra`` with SASL/SSL,
logging into Python), :func:`producer_config` (idempotent), :func:`consumer_config` (a worker's group
consumer, offsets stored by the loop) and :func:`reader_config` (a consumer that never joins its group:
partitions are *assigned*, nothing is committed). The faust monitor's equivalent is
:mod:`workers.kafka.faust_config`.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from workers.settings import KafkaSettings

_RDKAFKA_LOG = logging.getLogger("librdkafka")


def base_config(kafka: KafkaSettings) -> dict[str, Any]:
    """librdkafka properties shared by every client: bootstrap servers plus ``kafka.extra``."""
    # librdkafka's own log lines go to Python logging (logger "librdkafka"), not straight to stderr.
    conf: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "logger": _RDKAFKA_LOG,
        # Re-read metadata every 10 s instead of every 5 min: after a broker restart a client that cached
        # "no leader" for a partition finds the new leader in seconds (seen in the chaos run: a producer
        # waited out its whole message timeout).
        "topic.metadata.refresh.interval.ms": 10_000,
    }
    conf.update(kafka.extra)
    return conf


def producer_config(kafka: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    """Properties of an idempotent producer (``acks=all``, ordered retries, no duplicates on retry).

    ``linger.ms`` comes from the settings (default 2 ms: small batches, low added latency).
    """
    conf = base_config(kafka)
    conf.update(
        {
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": kafka.linger_ms,
            "message.max.bytes": kafka.message_max_bytes,
            "compression.type": "lz4",
            # A message not delivered within 60 s fails its delivery report; the loop then stops without
            # committing that input (it is processed again after the restart), instead of stalling 5 min.
            "message.timeout.ms": 60_000,
        }
    )
    conf.update(overrides)
    return conf


def consumer_config(kafka: KafkaSettings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """Properties of a worker consumer: offsets stored by the loop after delivery, auto-committed.

    ``enable.auto.offset.store=False`` is what makes the loop at-least-once: librdkafka's auto-commit only
    commits offsets the loop stored explicitly.
    """
    conf = base_config(kafka)
    conf.update(
        {
            "group.id": group_id,
            "enable.auto.commit": True,
            "enable.auto.offset.store": False,
            "auto.commit.interval.ms": 1000,
            "auto.offset.reset": "earliest",
            "max.poll.interval.ms": kafka.max_poll_interval_ms,
            "session.timeout.ms": kafka.session_timeout_ms,
            "partition.assignment.strategy": "cooperative-sticky",
            "fetch.wait.max.ms": 10,
            "enable.partition.eof": False,
        }
    )
    conf.update(overrides)
    return conf


def reader_config(kafka: KafkaSettings, purpose: str, **overrides: Any) -> dict[str, Any]:
    """Properties of a group-less reader: partitions are assigned explicitly, nothing is ever committed.

    librdkafka wants a ``group.id`` even for ``assign()``; a throwaway ``ragstream-<purpose>-<random>`` is
    given and never joined, so no live group's offsets move.

    Args:
        kafka: connection settings.
        purpose: a short word naming the reader in its throwaway group id (``read``, ``client``, ``replay``).
        **overrides: further properties (e.g. ``enable.partition.eof``, ``fetch.wait.max.ms``).
    """
    conf = base_config(kafka)
    conf.update(
        {
            "group.id": f"ragstream-{purpose}-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            "fetch.wait.max.ms": 100,
        }
    )
    conf.update(overrides)
    return conf
