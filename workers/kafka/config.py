"""librdkafka properties of every client ragstream builds: workers, producers, group-less readers.

One place builds them (STYLE.md §1): :func:`base_config` (bootstrap servers, logging into Python),
:func:`producer_config` (idempotent), :func:`consumer_config` (a worker's group consumer, offsets stored by the
loop) and :func:`reader_config` (a consumer that never joins its group: partitions are *assigned*, nothing is
committed). The faust monitor's equivalent is :mod:`workers.kafka.faust_config`.

Precedence: our defaults, then the caller's overrides, then the user's ``kafka.extra`` (``RAG_KAFKA__EXTRA``),
which always wins: ``{"partition.assignment.strategy": "range", "session.timeout.ms": "7000"}`` is what the
consumers get. The few properties our delivery promises depend on (:data:`PROTECTED`) are the exception: a
``kafka.extra`` that changes one is refused with a :class:`ConfigError` naming the property and why, before any
client is built (every client starts from :func:`base_config`, which checks).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from workers.contracts.errors import ConfigError
from workers.settings import KafkaSettings

_RDKAFKA_LOG = logging.getLogger("librdkafka")

#: librdkafka properties ``kafka.extra`` may not change: property → (accepted values, lower case; why).
#: ``None`` accepts no value at all (ragstream sets the property itself).
PROTECTED: dict[str, tuple[frozenset[str] | None, str]] = {
    "enable.auto.offset.store": (
        frozenset({"false"}),
        "a worker stores an input's offset only after its outputs are delivered (at-least-once); "
        "librdkafka's automatic store would commit inputs whose answers may be lost",
    ),
    "enable.idempotence": (
        frozenset({"true"}),
        "producers must not write duplicates or reorder messages when they retry",
    ),
    "acks": (
        frozenset({"all", "-1"}),
        "an output counts as delivered only once every in-sync replica has it (idempotent producers need acks=all)",
    ),
    "group.id": (
        None,
        "each worker's consumer group is its role (or RAG_WORKER__GROUP_ID); one group.id for all would make "
        "the retriever, generator and monolith steal each other's messages",
    ),
}


def check_extra(kafka: KafkaSettings) -> None:
    """Refuse a ``kafka.extra`` that changes a property our promises depend on (:data:`PROTECTED`).

    Setting a protected property to the value ragstream uses anyway (``enable.idempotence=true``) is accepted.

    Raises:
        ConfigError: one line naming the property, the value given and why it cannot be changed.
    """
    for key, value in kafka.extra.items():
        rule = PROTECTED.get(key)
        if rule is None:
            continue
        accepted, why = rule
        if accepted is not None and str(value).strip().lower() in accepted:
            continue
        raise ConfigError(f"RAG_KAFKA__EXTRA sets {key}={value!r}, which ragstream does not allow: {why}")


def _with_extra(conf: dict[str, Any], kafka: KafkaSettings) -> dict[str, Any]:
    """``conf`` with the user's ``kafka.extra`` applied last (it wins; :func:`check_extra` ran in base_config)."""
    conf.update(kafka.extra)
    return conf


def base_config(kafka: KafkaSettings) -> dict[str, Any]:
    """librdkafka properties shared by every client: bootstrap servers, metadata refresh, ``kafka.extra``.

    Raises:
        ConfigError: ``kafka.extra`` changes a protected property (:func:`check_extra`).
    """
    check_extra(kafka)
    # librdkafka's own log lines go to Python logging (logger "librdkafka"), not straight to stderr.
    conf: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "logger": _RDKAFKA_LOG,
        # Re-read metadata every 10 s instead of every 5 min: after a broker restart a client that cached
        # "no leader" for a partition finds the new leader in seconds (seen in the chaos run: a producer
        # waited out its whole message timeout).
        "topic.metadata.refresh.interval.ms": 10_000,
    }
    return _with_extra(conf, kafka)


def producer_config(kafka: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    """Properties of an idempotent producer (``acks=all``, ordered retries, no duplicates on retry).

    ``linger.ms`` comes from the settings (default 2 ms: small batches, low added latency). ``kafka.extra`` wins
    over these and over ``overrides``, except for the :data:`PROTECTED` properties.

    Raises:
        ConfigError: ``kafka.extra`` changes a protected property.
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
    return _with_extra(conf, kafka)


def consumer_config(kafka: KafkaSettings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """Properties of a worker consumer: offsets stored by the loop after delivery, auto-committed.

    ``enable.auto.offset.store=False`` is what makes the loop at-least-once: librdkafka's auto-commit only
    commits offsets the loop stored explicitly. ``kafka.extra`` wins over these (``session.timeout.ms``,
    ``partition.assignment.strategy``, ...) and over ``overrides``, except for the :data:`PROTECTED` properties.

    Raises:
        ConfigError: ``kafka.extra`` changes a protected property.
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
    return _with_extra(conf, kafka)


def reader_config(kafka: KafkaSettings, purpose: str, **overrides: Any) -> dict[str, Any]:
    """Properties of a group-less reader: partitions are assigned explicitly, nothing is ever committed.

    librdkafka wants a ``group.id`` even for ``assign()``; a throwaway ``ragstream-<purpose>-<random>`` is
    given and never joined, so no live group's offsets move.

    Args:
        kafka: connection settings.
        purpose: a short word naming the reader in its throwaway group id (``read``, ``client``, ``replay``).
        **overrides: further properties (e.g. ``enable.partition.eof``, ``fetch.wait.max.ms``).

    Raises:
        ConfigError: ``kafka.extra`` changes a protected property.
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
    return _with_extra(conf, kafka)
