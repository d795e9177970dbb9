"""A run's log: what was replayed into a shadow run and which shadow configuration answered it.

Every run (``rag.eval.<run>.``) has a one-partition topic ``rag.eval.<run>.rag.run-log`` next to its other
topics. ``ragstream replay`` appends a ``replay`` entry once its records are delivered (how many records and
distinct request ids, from where, at what pace); ``ragstream shadow`` appends a ``shadow`` entry when it
starts (its ``--set`` overrides) and one when it stops (answers, why it stopped). From these:

* ``shadow`` knows how many requests it must answer (the replayed request ids), so it stops when all are
  answered, and it knows when a replay it waits for has finished;
* ``shadow`` refuses to answer a run again with other settings (the old answers would be counted as the new
  configuration's);
* ``runs list`` shows when a run was created and how many requests it replayed.

Entries are JSON (:class:`RunLogEntry`); the log is read without a consumer group.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workers.contracts.errors import ConfigError, RetryableError
from workers.contracts.topics import TopicsFile, TopicSpec
from workers.kafka.admin import admin_client, apply_topics
from workers.kafka.producer import KafkaProducer
from workers.kafka.reader import read_topic
from workers.settings import KafkaSettings

log = logging.getLogger(__name__)

#: Base name of the run log (after the run's prefix).
RUN_LOG = "rag.run-log"
#: Retention of the run log: as long as the replayed requests (topics.yaml: 7 days).
RUN_LOG_RETENTION_MS = "604800000"


class RunLogEntry(BaseModel):
    """One entry of a run's log.

    Attributes:
        kind: ``replay`` (records delivered into the run), ``shadow_start`` or ``shadow_end``.
        run: the run name.
        at: when it was written (UTC).
        source_topic: replay: the topic read.
        produced: replay: records delivered.
        request_ids: replay: distinct request ids among them.
        pace: replay: ``burst``, ``original`` (the original spacing) or ``<N>/s``.
        overrides: shadow: the ``--set`` overrides as environment variables (``RAG_RETRIEVER__TOP_K=3``).
        answered: shadow_end: distinct request ids answered.
        reason: shadow_end: why it stopped.
    """

    model_config = ConfigDict(extra="ignore")

    kind: Literal["replay", "shadow_start", "shadow_end"]
    run: str
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    source_topic: str = ""
    produced: int = 0
    request_ids: int = 0
    pace: str = ""
    overrides: dict[str, str] = Field(default_factory=dict)
    answered: int = 0
    reason: str = ""


def run_log_topic(prefix: str) -> str:
    """The run log of the run whose topics start with ``prefix`` (``rag.eval.k3.rag.run-log``)."""
    return prefix + RUN_LOG


def ensure_run_log(kafka: KafkaSettings, prefix: str, replication_factor: int = 1) -> str:
    """Create the run log topic when missing (one partition); returns its name.

    Raises:
        ConfigError: the topic could not be created.
    """
    topic = run_log_topic(prefix)
    spec = TopicSpec(
        name=topic,
        partitions=1,
        replication_factor=replication_factor,
        config={"cleanup.policy": "delete", "retention.ms": RUN_LOG_RETENTION_MS},
    )
    apply_topics(admin_client(kafka), TopicsFile(topics=[spec]))
    return topic


def append(kafka: KafkaSettings, prefix: str, entry: RunLogEntry, timeout_s: float = 30.0) -> None:
    """Append an entry to the run's log (created when missing) and wait for its delivery.

    Raises:
        ConfigError: the topic could not be created.
        RetryableError: the entry was not delivered within ``timeout_s``.
    """
    topic = ensure_run_log(kafka, prefix)
    failed: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            failed.append(str(err))

    with KafkaProducer(kafka) as producer:
        producer.produce(topic, entry.model_dump_json().encode(), entry.run.encode(), None, on_delivery)
        left = producer.flush(timeout_s)
    if left or failed:
        raise RetryableError(f"could not write to the run log {topic}: {failed[0] if failed else 'not delivered'}")
    log.info("run log topic=%s kind=%s", topic, entry.kind)


def read(kafka: KafkaSettings, prefix: str, timeout_s: float = 30.0) -> list[RunLogEntry]:
    """The entries of a run's log in order; empty when the run has no log (yet). Unreadable entries are
    skipped with a warning."""
    topic = run_log_topic(prefix)
    try:
        records = read_topic(kafka, topic, timeout_s=timeout_s)
    except ConfigError:
        return []
    out = []
    for rec in sorted(records, key=lambda r: r.offset):
        try:
            out.append(RunLogEntry.model_validate_json(rec.value or b""))
        except ValidationError:
            log.warning("unreadable run log entry topic=%s offset=%d", topic, rec.offset)
    return out


def last_shadow(entries: list[RunLogEntry]) -> RunLogEntry | None:
    """The most recent ``shadow_start`` entry, ``None`` when no shadow answered the run yet."""
    starts = [e for e in entries if e.kind == "shadow_start"]
    return starts[-1] if starts else None


def replays(entries: list[RunLogEntry]) -> list[RunLogEntry]:
    """The ``replay`` entries."""
    return [e for e in entries if e.kind == "replay"]
