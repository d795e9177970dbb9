"""``topics.yaml``: the topics of the pipeline (names, partitions, configs) and their consumer groups.

This module only parses the file (no Kafka); :func:`workers.kafka.admin.apply_topics` applies it to a cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from workers.contracts.errors import ConfigError


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
