"""Load ``topics.yaml`` and apply it to a cluster with the admin client.

``apply`` creates the topics that are missing and reports drift (partition count, replication factor,
configs) of those that exist, without deleting or changing anything; a second run changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
from pydantic import BaseModel, ConfigDict, Field

from workers.errors import ConfigError

log = logging.getLogger(__name__)


class TopicSpec(BaseModel):
    """One topic of topics.yaml."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    partitions: int = Field(ge=1)
    replication_factor: int = Field(1, ge=1)
    key: str = ""
    value: str = ""
    config: dict[str, str] = Field(default_factory=dict)


class TopicsFile(BaseModel):
    """The parsed topics.yaml: topics (with defaults applied) and consumer groups."""

    model_config = ConfigDict(frozen=True)

    topics: list[TopicSpec]
    consumer_groups: dict[str, list[str]] = Field(default_factory=dict)

    def with_prefix(self, prefix: str) -> TopicsFile:
        """The same topics renamed ``prefix + name`` (a shadow pipeline's topic set)."""
        if not prefix:
            return self
        return TopicsFile(
            topics=[t.model_copy(update={"name": prefix + t.name}) for t in self.topics],
            consumer_groups={g: [prefix + n for n in names] for g, names in self.consumer_groups.items()},
        )


def load_topics(path: Path) -> TopicsFile:
    """Parse topics.yaml, applying its ``defaults`` (replication factor, config) to every topic.

    Raises:
        ConfigError: the file is missing or does not match the expected shape.
    """
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    defaults = raw.get("defaults", {}) or {}
    topics: list[TopicSpec] = []
    for entry in raw.get("topics", []) or []:
        merged: dict[str, Any] = {"replication_factor": defaults.get("replication_factor", 1)}
        merged.update(entry)
        cfg = {str(k): str(v) for k, v in (defaults.get("config") or {}).items()}
        cfg.update({str(k): str(v) for k, v in (entry.get("config") or {}).items()})
        merged["config"] = cfg
        try:
            topics.append(TopicSpec(**merged))
        except ValueError as exc:
            raise ConfigError(f"{path}: bad topic entry {entry!r}: {exc}") from exc
    return TopicsFile(topics=topics, consumer_groups=raw.get("consumer_groups", {}) or {})


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
