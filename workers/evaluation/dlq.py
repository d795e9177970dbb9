"""The dead-letter topic for operators: list what failed and why, send chosen messages back to their source.

Both read the dead-letter topic with ``assign()`` up to the high watermark taken at the start (no consumer
group, nothing committed), so they never disturb the workers. ``replay`` produces each chosen message's raw
value, key and original headers (plus ``dlq_replayed_from`` = dead-letter partition/offset) to its source
topic with an idempotent producer and waits for every delivery report.
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from workers.contracts.errors import ConfigError, MessageError
from workers.contracts.messages import DeadLetter
from workers.contracts.serde import decode
from workers.kafka.admin import check_broker
from workers.kafka.producer import KafkaProducer
from workers.kafka.reader import read_topic
from workers.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeadLetterRecord:
    """One dead letter and where it sits in the dead-letter topic."""

    partition: int
    offset: int
    letter: DeadLetter


@dataclass(frozen=True)
class DlqFilter:
    """Which dead letters to select (all given conditions must hold; empty = all)."""

    stage: str | None = None
    error_class: str | None = None
    source_topic: str | None = None
    request_ids: frozenset[uuid.UUID] = frozenset()
    #: ``(partition, offset)`` positions in the dead-letter topic.
    positions: frozenset[tuple[int, int]] = frozenset()

    def __call__(self, rec: DeadLetterRecord) -> bool:
        d = rec.letter
        return (
            (self.stage is None or d.stage == self.stage)
            and (self.error_class is None or d.error_class == self.error_class)
            and (self.source_topic is None or d.source_topic == self.source_topic)
            and (not self.request_ids or d.request_id in self.request_ids)
            and (not self.positions or (rec.partition, rec.offset) in self.positions)
        )


def parse_positions(spec: str) -> frozenset[tuple[int, int]]:
    """Parse ``"0:12,0:15,2:3"`` (partition:offset pairs) into positions.

    Raises:
        ConfigError: a pair is not ``int:int``.
    """
    out: set[tuple[int, int]] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        try:
            p, o = part.split(":")
            out.add((int(p), int(o)))
        except ValueError:
            raise ConfigError(f"bad dead-letter position {part!r}: expected PARTITION:OFFSET") from None
    return frozenset(out)


def read_dead_letters(
    settings: Settings, timeout_s: float = 120.0
) -> Iterator[DeadLetterRecord | tuple[int, int, str]]:
    """Every message of the dead-letter topic up to the high watermarks at the start
    (:func:`workers.kafka.read_topic`: assigned partitions, no consumer group, nothing committed).

    Args:
        settings: connection settings and topic names.
        timeout_s: seconds allowed to read the range.

    Yields :class:`DeadLetterRecord`, or ``(partition, offset, reason)`` for a message that is not a valid
    DeadLetter (it is shown, never skipped silently).

    Raises:
        ServiceUnavailableError: no broker.
        ConfigError: the dead-letter topic does not exist.
        RetryableError: the range was not read within ``timeout_s``.
    """
    check_broker(settings.kafka)
    topic = settings.topics.name("dead_letter")
    try:
        records = read_topic(settings.kafka, topic, timeout_s=timeout_s)
    except ConfigError:
        raise ConfigError(f"dead-letter topic {topic!r} does not exist (run `ragstream topics apply`)") from None
    for rec in records:
        yield _record(rec.partition, rec.offset, rec.value)


def _record(partition: int, offset: int, value: bytes | None) -> DeadLetterRecord | tuple[int, int, str]:
    try:
        return DeadLetterRecord(partition, offset, decode(value, DeadLetter))
    except MessageError as exc:
        return (partition, offset, str(exc))


@dataclass
class DlqReplayReport:
    """What ``replay_dead_letters`` sent back."""

    selected: int = 0
    delivered: int = 0
    failed: int = 0
    skipped_truncated: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)


def replay_dead_letters(
    settings: Settings,
    select: Callable[[DeadLetterRecord], bool],
    *,
    dry_run: bool = False,
) -> DlqReplayReport:
    """Produce the chosen dead letters' raw messages back to their source topics.

    Args:
        settings: Kafka and topic settings.
        select: which records to send back (e.g. a :class:`DlqFilter`).
        dry_run: count only.

    Returns:
        Counts of selected, delivered and failed messages, per source topic.

    Raises:
        ServiceUnavailableError, ConfigError: see :func:`read_dead_letters`.
    """
    report = DlqReplayReport()
    chosen = [r for r in read_dead_letters(settings) if isinstance(r, DeadLetterRecord) and select(r)]
    truncated = [r for r in chosen if r.letter.value_truncated]
    if truncated:
        log.warning("skipping %d dead letters whose value was truncated (not replayable)", len(truncated))
        report.skipped_truncated = len(truncated)
        chosen = [r for r in chosen if not r.letter.value_truncated]
    report.selected = len(chosen)
    if dry_run or not chosen:
        for r in chosen:
            report.by_topic[r.letter.source_topic] = report.by_topic.get(r.letter.source_topic, 0) + 1
        return report

    def on_delivery(err: object, msg: object) -> None:
        if err is None:
            report.delivered += 1
        else:
            report.failed += 1
            log.error("dlq replay delivery failed: %s", err)

    with KafkaProducer(settings.kafka) as producer:
        for r in chosen:
            d = r.letter
            headers = dict(d.headers)
            headers["dlq_replayed_from"] = f"{settings.topics.name('dead_letter')}/{r.partition}/{r.offset}"
            key = base64.b64decode(d.key) if d.key is not None else None
            producer.produce(d.source_topic, base64.b64decode(d.value_b64), key, headers, on_delivery)
            report.by_topic[d.source_topic] = report.by_topic.get(d.source_topic, 0) + 1
        report.failed += producer.flush(30.0)
    return report
