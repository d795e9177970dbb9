"""The dead-letter topic for operators: list what failed and why, show one with its raw payload, send chosen
messages back to their source.

All read the dead-letter topic with ``assign()`` up to the high watermark taken at the start (no consumer
group, nothing committed), so they never disturb the workers. ``replay`` produces each chosen message's raw
value, key and original headers to its source topic with an idempotent producer and waits for every delivery
report. It adds ``dlq_replayed_from`` (dead-letter partition/offset), ``dlq_attempts`` (the attempts so far)
and ``dlq_first_failure_at``: when the message fails again, its new dead letter counts on from there
(:func:`workers.stream.records.dead_letter_of`). Positions (``--positions 0:12``) that hold no dead letter
are an error, not an empty selection.
"""

from __future__ import annotations

import base64
import json
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
    if not out:
        raise ConfigError(f"no dead-letter position in {spec!r}: expected PARTITION:OFFSET, e.g. 0:12,1:3")
    return frozenset(out)


def check_positions(wanted: frozenset[tuple[int, int]], present: set[tuple[int, int]], topic: str) -> None:
    """Raise when a requested position holds no dead letter (a typo must not select nothing silently).

    Raises:
        ConfigError: names the missing positions and what the topic holds.
    """
    missing = sorted(wanted - present)
    if not missing:
        return
    held: dict[int, list[int]] = {}
    for p, o in present:
        held.setdefault(p, []).append(o)
    spans = ", ".join(f"{p}:{min(os)}-{max(os)}" for p, os in sorted(held.items())) or "nothing"
    raise ConfigError(
        f"no dead letter at {', '.join(f'{p}:{o}' for p, o in missing)} in {topic} (it holds {spans}; "
        "`ragstream dlq list` shows them)"
    )


def payload_text(letter: DeadLetter, limit: int = 100_000) -> str:
    """The dead letter's original message as text: indented JSON when it is JSON, the UTF-8 text otherwise,
    else a Python bytes literal; cut at ``limit`` characters."""
    raw = base64.b64decode(letter.value_b64)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return repr(raw)[:limit]
    try:
        text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        pass
    return text[:limit]


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
        ServiceUnavailableError, ConfigError: see :func:`read_dead_letters`; ConfigError also when a position
            of a :class:`DlqFilter` holds no dead letter (:func:`check_positions`).
    """
    report = DlqReplayReport()
    letters = [r for r in read_dead_letters(settings) if isinstance(r, DeadLetterRecord)]
    if isinstance(select, DlqFilter) and select.positions:
        check_positions(
            select.positions, {(r.partition, r.offset) for r in letters}, settings.topics.name("dead_letter")
        )
    chosen = [r for r in letters if select(r)]
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
            headers["dlq_attempts"] = str(d.attempts)
            headers["dlq_first_failure_at"] = d.first_failure_at.isoformat()
            key = base64.b64decode(d.key) if d.key is not None else None
            producer.produce(d.source_topic, base64.b64decode(d.value_b64), key, headers, on_delivery)
            report.by_topic[d.source_topic] = report.by_topic.get(d.source_topic, 0) + 1
        report.failed += producer.flush(30.0)
    return report
