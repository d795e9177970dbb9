"""Kafka administration: is a broker there, which topics exist, create what topics.yaml asks for.

:func:`check_broker` is the fail-fast check every command and worker runs before it starts;
:func:`apply_topics` creates missing topics and reports drift without changing anything that exists (a second
run changes nothing); :func:`topic_partitions` tells how many partitions named topics have.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from workers.contracts.errors import ConfigError, ServiceUnavailableError
from workers.contracts.topics import TopicsFile, load_topics
from workers.kafka.config import base_config
from workers.settings import KafkaSettings

log = logging.getLogger(__name__)


def admin_client(kafka: KafkaSettings) -> AdminClient:
    """An admin client on the settings' cluster (``kafka.extra`` applied: SASL/SSL)."""
    return AdminClient(base_config(kafka))


def check_broker(kafka: KafkaSettings, timeout_s: float = 10.0) -> None:
    """Fail fast with a one-line error when no broker answers at ``bootstrap_servers``.

    Raises:
        ServiceUnavailableError: no metadata response within ``timeout_s`` seconds.
    """
    conf = base_config(kafka)
    conf["socket.connection.setup.timeout.ms"] = int(timeout_s * 1000)
    conf["log_level"] = 0  # the one-line error below says it all; no per-attempt connection logs
    admin = AdminClient(conf)
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise ServiceUnavailableError(
            f"Kafka broker not reachable at {kafka.bootstrap_servers!r} within {timeout_s:.0f} s "
            f"(set RAG_KAFKA__BOOTSTRAP_SERVERS): {exc.args[0].str() if exc.args else exc}"
        ) from None


def topic_partitions(
    kafka: KafkaSettings, names: Iterable[str] | None = None, timeout_s: float = 10.0
) -> dict[str, int]:
    """Partition counts of topics on the broker: the given ``names`` that exist, or every topic.

    Raises:
        ServiceUnavailableError: the broker did not answer within ``timeout_s`` seconds.
    """
    try:
        md = admin_client(kafka).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise ServiceUnavailableError(f"Kafka broker not reachable at {kafka.bootstrap_servers!r}: {exc}") from None
    wanted = set(names) if names is not None else set(md.topics)
    return {
        name: len(meta.partitions)
        for name, meta in md.topics.items()
        if name in wanted and meta.error is None and meta.partitions
    }


def ensure_topics(kafka: KafkaSettings, topics_file: Path, prefix: str = "") -> ApplyReport:
    """Create the topics of ``topics_file`` (renamed ``prefix + name``) that are missing; log what changed.

    Raises:
        ConfigError: the file is bad or a topic could not be created.
        ServiceUnavailableError: no broker answers.
    """
    check_broker(kafka)
    report = apply_topics(admin_client(kafka), load_topics(topics_file).with_prefix(prefix))
    for name in report.created:
        log.info("created topic %s", name)
    for line in report.drift:
        log.warning("topic drift (left as is): %s", line)
    return report


@dataclass
class ApplyReport:
    """What ``apply_topics`` did: topics created, present unchanged, and drift found (not fixed)."""

    created: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """True when a topic was created."""
        return bool(self.created)


def apply_topics(admin: AdminClient, spec: TopicsFile, timeout_s: float = 30.0) -> ApplyReport:
    """Create missing topics and report drift in partitions, replication factor and configs.

    Never deletes a topic or changes an existing one: drift is reported for an operator to act on.

    Raises:
        ConfigError: topic creation failed for a reason other than "already exists".
    """
    report = ApplyReport()
    meta = admin.list_topics(timeout=timeout_s)
    existing = meta.topics
    missing = [t for t in spec.topics if t.name not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(t.name, t.partitions, t.replication_factor, config=dict(t.config)) for t in missing],
            operation_timeout=timeout_s,
            request_timeout=timeout_s,
        )
        for name, fut in futures.items():
            try:
                fut.result()
                report.created.append(name)
            except KafkaException as exc:
                err = exc.args[0]
                if err.name() == "TOPIC_ALREADY_EXISTS":
                    report.unchanged.append(name)
                else:
                    raise ConfigError(f"creating topic {name} failed: {err.str()}") from exc
    present = [t for t in spec.topics if t.name in existing]
    if present:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, t.name) for t in present]
        configs = admin.describe_configs(resources, request_timeout=timeout_s)
        by_name = {r.name: f.result() for r, f in configs.items()}
        for t in present:
            tmeta = existing[t.name]
            drift: list[str] = []
            if len(tmeta.partitions) != t.partitions:
                drift.append(f"partitions {len(tmeta.partitions)} (wanted {t.partitions})")
            replicas = {len(p.replicas) for p in tmeta.partitions.values()}
            if replicas and replicas != {t.replication_factor}:
                drift.append(f"replication_factor {sorted(replicas)} (wanted {t.replication_factor})")
            actual = by_name.get(t.name, {})
            for key, want in t.config.items():
                have = actual.get(key)
                if have is None or str(have.value) != want:
                    drift.append(f"{key}={None if have is None else have.value} (wanted {want})")
            if drift:
                report.drift.append(f"{t.name}: " + "; ".join(drift))
            else:
                report.unchanged.append(t.name)
    return report


def record_counts(kafka: KafkaSettings, names: Iterable[str], timeout_s: float = 10.0) -> dict[str, int]:
    """Records in each named topic that exists: the sum over its partitions of the latest minus the earliest
    offset (compacted or transactional topics hold somewhat fewer).

    Raises:
        ServiceUnavailableError: the broker did not answer within ``timeout_s`` seconds.
    """
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import OffsetSpec

    parts = topic_partitions(kafka, names, timeout_s)
    if not parts:
        return {}
    admin = admin_client(kafka)
    tps = [TopicPartition(t, p) for t, n in parts.items() for p in range(n)]
    ends: dict[str, dict[tuple[str, int], int]] = {}
    try:
        for side, spec in (("low", OffsetSpec.earliest()), ("high", OffsetSpec.latest())):
            futures = admin.list_offsets({tp: spec for tp in tps}, request_timeout=timeout_s)
            ends[side] = {(tp.topic, tp.partition): fut.result().offset for tp, fut in futures.items()}
    except KafkaException as exc:
        raise ServiceUnavailableError(f"listing offsets at {kafka.bootstrap_servers!r} failed: {exc}") from None
    out = dict.fromkeys(parts, 0)
    for key, high in ends["high"].items():
        out[key[0]] += max(0, high - ends["low"].get(key, 0))
    return out


def delete_topics(kafka: KafkaSettings, names: Iterable[str], timeout_s: float = 30.0) -> list[str]:
    """Delete topics; those already gone are skipped. Returns the names deleted.

    Raises:
        ConfigError: the broker refused to delete one (its error is in the message).
    """
    wanted = sorted(set(names))
    if not wanted:
        return []
    admin = admin_client(kafka)  # kept referenced until the futures are done
    futures = admin.delete_topics(wanted, operation_timeout=timeout_s, request_timeout=timeout_s)
    deleted = _deleted(futures, "topic", gone=("UNKNOWN_TOPIC_OR_PART",))
    log.info("deleted topics %s", deleted)
    return deleted


def consumer_groups(kafka: KafkaSettings, prefix: str, timeout_s: float = 10.0) -> list[str]:
    """Ids of the consumer groups whose id starts with ``prefix``.

    Raises:
        ServiceUnavailableError: the broker did not answer within ``timeout_s`` seconds.
    """
    try:
        admin = admin_client(kafka)  # kept referenced until the future is done
        result = admin.list_consumer_groups(request_timeout=timeout_s).result()
    except KafkaException as exc:
        raise ServiceUnavailableError(f"listing consumer groups at {kafka.bootstrap_servers!r} failed: {exc}") from None
    return sorted(g.group_id for g in result.valid if g.group_id.startswith(prefix))


def delete_consumer_groups(kafka: KafkaSettings, groups: Iterable[str], timeout_s: float = 30.0) -> list[str]:
    """Delete consumer groups (they must have no active member); those already gone are skipped.

    Returns:
        The group ids deleted.

    Raises:
        ConfigError: a group could not be deleted (e.g. it still has members).
    """
    wanted = sorted(set(groups))
    if not wanted:
        return []
    admin = admin_client(kafka)  # kept referenced until the futures are done
    futures = admin.delete_consumer_groups(wanted, request_timeout=timeout_s)
    return _deleted(futures, "consumer group", gone=("GROUP_ID_NOT_FOUND", "_NOENT"))


def _deleted(futures: Mapping[str, Any], what: str, gone: tuple[str, ...]) -> list[str]:
    """The names whose deletion future succeeded, sorted; a name already gone (error ``gone``) is skipped.

    Raises:
        ConfigError: another error (the name and the broker's error in the message).
    """
    deleted = []
    for name, fut in futures.items():
        try:
            fut.result()
            deleted.append(name)
        except KafkaException as exc:
            err = exc.args[0]
            if err.name() not in gone:
                raise ConfigError(f"deleting {what} {name} failed: {err.str()}") from exc
    return sorted(deleted)
