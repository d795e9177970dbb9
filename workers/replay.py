"""Replay a bounded range of a topic into a shadow topic set, for evaluating another configuration.

``ragstream replay`` reads records of one topic (default: the requests topic) and produces them, unchanged,
to the same topic name under a shadow prefix (default ``rag.eval.<run>.``), where a shadow pipeline (the
same workers with another model, prompt template or retrieval setting) picks them up.

Semantics:

* **Bounded.** The range of every partition is fixed when the replay starts: it ends at the high watermark
  captured then (records produced later are not replayed). A partition whose start is at or past its end
  is done at once; a ``since`` time past the last record of a partition gives nothing for it (it never
  turns into "follow the live tail").
* **Never joins a consumer group.** The consumer is *assigned* its partitions at explicit start offsets
  (``assign([TopicPartition(topic, p, start)])``, no ``subscribe``, no seek), never commits
  (``enable.auto.commit=False``) and uses a throwaway ``group.id`` that librdkafka requires but nothing uses;
  live consumer groups' committed offsets stay as they are.
* **Unchanged values.** Key and value bytes are copied as they are (the request id stays the same); the
  original headers are kept and the run is added as headers: ``replay_run`` (run name), ``replay_source``
  (``topic/partition/offset``) and ``replay_source_timestamp`` (the original timestamp, ms since the epoch).
  The shadow record gets a new timestamp (now), so shadow retention counts from the replay.
* **Nothing dropped.** An idempotent producer; a full local queue (``BufferError``) is waited out by serving
  delivery reports; every delivery failure is counted in the report (the CLI then exits non-zero).

Selection (all optional, combined by intersection): ``from_offset`` (every partition), ``offsets`` (per
partition, ``"0:5-9,1:0-"``), ``since``/``until`` (record timestamps, resolved with ``offsets_for_times``
and then checked per record) and ``request_ids`` (scan the range, keep matching records). The pure
planning functions (:func:`parse_offsets`, :func:`plan_ranges`, ...) use no Kafka and are unit-tested.

Example::

    plan = build_plan(since="2026-11-30T10:00:00Z", until="2026-11-30T11:00:00Z")
    report = replay(load_settings(), plan, run="tmpl-v2")
    print(report.produced, report.failed)
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from workers.errors import ConfigError, RetryableError
from workers.kafka import base_config, check_broker, producer_config
from workers.settings import Settings
from workers.topics import TopicsFile, TopicSpec, apply_topics, load_topics

log = logging.getLogger(__name__)

#: Default shadow prefix; ``{run}`` is replaced by the run name.
DEFAULT_PREFIX = "rag.eval.{run}."
#: Headers the replay adds to every shadow record (earlier ones of the same name are replaced).
REPLAY_HEADERS = ("replay_run", "replay_source", "replay_source_timestamp")

_TOPIC_CHARS = re.compile(r"^[A-Za-z0-9._-]+$")
_MAX_TOPIC_LEN = 249


# --------------------------------------------------------------------------- pure planning (no Kafka)


@dataclass(frozen=True)
class OffsetRange:
    """A requested offset range of one partition, ``[start, end)``; ``None`` = from the beginning / to the end."""

    start: int | None = None
    end: int | None = None


@dataclass(frozen=True)
class PartitionRange:
    """The resolved range of one partition: offsets ``[start, end)`` to read (``end`` is exclusive)."""

    partition: int
    start: int
    end: int

    @property
    def count(self) -> int:
        """Offsets in the range (records, unless the log has gaps from compaction or transactions)."""
        return max(0, self.end - self.start)


@dataclass(frozen=True)
class ReplayPlan:
    """What to replay; build it with :func:`build_plan` from user input.

    Attributes:
        topic: source topic; ``None`` = the requests topic of the settings.
        from_offset: first offset of every partition (``>= 0``).
        offsets: per-partition ranges; partitions not listed are not replayed.
        since: first record time (inclusive, timezone-aware).
        until: end record time (exclusive, timezone-aware).
        request_ids: keep only records with these request ids (header ``request_id`` or the JSON field).
    """

    topic: str | None = None
    from_offset: int | None = None
    offsets: Mapping[int, OffsetRange] | None = None
    since: datetime | None = None
    until: datetime | None = None
    request_ids: frozenset[uuid.UUID] | None = None


def parse_offsets(spec: str) -> dict[int, OffsetRange]:
    """Parse a per-partition offset spec such as ``"0:5-9,1:0-,2:-100,3:7"``.

    Forms of one item: ``P:A-B`` offsets A to B *inclusive*; ``P:A-`` from A to the end; ``P:-B`` from the
    beginning to B inclusive; ``P:A`` the single offset A; ``P:-`` or ``P`` the whole partition.

    Args:
        spec: comma-separated items, whitespace allowed around them.

    Returns:
        ``{partition: OffsetRange}`` with an exclusive ``end``.

    Raises:
        ConfigError: an item is malformed, negative, lists a partition twice or has ``A > B``.
    """
    out: dict[int, OffsetRange] = {}
    items = [i.strip() for i in spec.split(",") if i.strip()]
    if not items:
        raise ConfigError(f"empty offset spec {spec!r} (expected e.g. '0:5-9,1:0-')")
    for item in items:
        part_s, sep, rng = item.partition(":")
        try:
            partition = int(part_s)
            start: int | None
            end: int | None
            if not sep or rng.strip() in ("", "-"):
                start, end = None, None
            elif "-" in rng:
                a, b = (x.strip() for x in rng.split("-", 1))
                start = int(a) if a else None
                end = int(b) + 1 if b else None
            else:
                start = int(rng)
                end = start + 1
        except ValueError:
            raise ConfigError(f"bad offset spec item {item!r} (expected P:A-B, P:A-, P:-B, P:A or P)") from None
        if partition < 0 or (start is not None and start < 0) or (end is not None and end < 1):
            raise ConfigError(f"bad offset spec item {item!r}: partitions and offsets must be >= 0")
        if start is not None and end is not None and start >= end:
            raise ConfigError(f"bad offset spec item {item!r}: start is after end")
        if partition in out:
            raise ConfigError(f"partition {partition} appears twice in offset spec {spec!r}")
        out[partition] = OffsetRange(start, end)
    return out


def parse_time(text: str) -> datetime:
    """Parse a replay time: ISO 8601 with a timezone (``2026-11-30T10:00:00Z``) or epoch milliseconds.

    Raises:
        ConfigError: not a time, or an ISO time without a timezone.
    """
    t = text.strip()
    if t.isdigit():
        return datetime.fromtimestamp(int(t) / 1000.0, UTC)
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        raise ConfigError(f"bad time {text!r} (expected ISO 8601 such as 2026-11-30T10:00:00Z)") from None
    if dt.tzinfo is None:
        raise ConfigError(f"time {text!r} has no timezone; add 'Z' for UTC or an offset like +01:00")
    return dt


def parse_request_ids(text: str) -> frozenset[uuid.UUID]:
    """Parse request ids separated by commas, whitespace or new lines; ``#`` starts a comment.

    Raises:
        ConfigError: an item is not a UUID, or there is none.
    """
    ids: set[uuid.UUID] = set()
    for line in text.splitlines():
        for item in re.split(r"[,\s]+", line.split("#", 1)[0]):
            if not item:
                continue
            try:
                ids.add(uuid.UUID(item))
            except ValueError:
                raise ConfigError(f"bad request id {item!r} (expected a UUID)") from None
    if not ids:
        raise ConfigError("no request ids given")
    return frozenset(ids)


def load_request_ids(arg: str) -> frozenset[uuid.UUID]:
    """Request ids from a file (one per line or comma-separated) when ``arg`` names one, else from ``arg``.

    Raises:
        ConfigError: the file cannot be read, or an id is not a UUID.
    """
    path = Path(arg)
    if path.is_file():
        try:
            return parse_request_ids(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read request ids from {path}: {exc}") from exc
    return parse_request_ids(arg)


def build_plan(
    *,
    topic: str | None = None,
    from_offset: int | None = None,
    offsets: str | None = None,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    request_ids: str | Iterable[uuid.UUID | str] | None = None,
) -> ReplayPlan:
    """Validate user input into a :class:`ReplayPlan`.

    Args:
        topic: source topic (``None`` = the requests topic).
        from_offset: first offset of every partition; not together with ``offsets``.
        offsets: per-partition spec, see :func:`parse_offsets`.
        since: first record time (ISO 8601 with timezone, epoch ms, or an aware datetime).
        until: end record time, exclusive.
        request_ids: a file name or comma-separated ids (str), or an iterable of ids.

    Raises:
        ConfigError: conflicting or malformed selectors.
    """
    if from_offset is not None and offsets is not None:
        raise ConfigError("give either --from-offset or --offsets, not both")
    if from_offset is not None and from_offset < 0:
        raise ConfigError(f"--from-offset must be >= 0, got {from_offset}")
    since_dt = parse_time(since) if isinstance(since, str) else since
    until_dt = parse_time(until) if isinstance(until, str) else until
    for name, dt in (("since", since_dt), ("until", until_dt)):
        if dt is not None and dt.tzinfo is None:
            raise ConfigError(f"{name} must carry a timezone")
    if since_dt is not None and until_dt is not None and since_dt >= until_dt:
        raise ConfigError(f"--since ({since_dt.isoformat()}) must be before --until ({until_dt.isoformat()})")
    ids: frozenset[uuid.UUID] | None = None
    if isinstance(request_ids, str):
        ids = load_request_ids(request_ids)
    elif request_ids is not None:
        try:
            ids = frozenset(i if isinstance(i, uuid.UUID) else uuid.UUID(str(i)) for i in request_ids)
        except ValueError as exc:
            raise ConfigError(f"bad request id: {exc}") from None
    if topic is not None and not _valid_topic(topic):
        raise ConfigError(f"bad topic name {topic!r}")
    return ReplayPlan(
        topic=topic,
        from_offset=from_offset,
        offsets=parse_offsets(offsets) if offsets is not None else None,
        since=since_dt,
        until=until_dt,
        request_ids=ids,
    )


def to_epoch_ms(dt: datetime) -> int:
    """An aware datetime as milliseconds since the Unix epoch (Kafka record timestamps)."""
    return int(dt.timestamp() * 1000)


def time_offset(found: int, high: int) -> int:
    """Map an ``offsets_for_times`` answer to an offset: a negative one (``-1`` = OFFSET_END, no record at or
    after the time) means the high watermark, i.e. nothing of the partition is at or after that time."""
    return high if found < 0 else min(found, high)


def plan_ranges(
    watermarks: Mapping[int, tuple[int, int]],
    *,
    from_offset: int | None = None,
    offsets: Mapping[int, OffsetRange] | None = None,
    since_offsets: Mapping[int, int] | None = None,
    until_offsets: Mapping[int, int] | None = None,
) -> dict[int, PartitionRange]:
    """Turn watermarks and the requested selectors into one ``[start, end)`` range per partition.

    Every selector narrows the range (intersection); the result is clamped to ``[low, high)``, so it never
    reaches past the high watermark captured at the start: the replay is bounded.

    Args:
        watermarks: ``{partition: (low, high)}`` offsets at the start of the replay.
        from_offset: first offset of every partition.
        offsets: per-partition ranges (exclusive end); partitions not listed get an empty range.
        since_offsets: raw ``offsets_for_times`` answers for the start time (``-1`` = past the end).
        until_offsets: raw ``offsets_for_times`` answers for the end time (``-1`` = past the end).

    Returns:
        ``{partition: PartitionRange}`` for every partition of ``watermarks`` (empty ones have ``start == end``).

    Raises:
        ConfigError: ``offsets`` names a partition the topic does not have.
    """
    if offsets is not None:
        unknown = sorted(set(offsets) - set(watermarks))
        if unknown:
            raise ConfigError(f"partitions {unknown} do not exist (the topic has {len(watermarks)})")
    out: dict[int, PartitionRange] = {}
    for p in sorted(watermarks):
        low, high = watermarks[p]
        start, end = low, high
        if from_offset is not None:
            start = max(start, from_offset)
        if offsets is not None:
            rng = offsets.get(p)
            if rng is None:
                start = end = high
            else:
                if rng.start is not None:
                    start = max(start, rng.start)
                if rng.end is not None:
                    end = min(end, rng.end)
        if since_offsets is not None and p in since_offsets:
            start = max(start, time_offset(since_offsets[p], high))
        if until_offsets is not None and p in until_offsets:
            end = min(end, time_offset(until_offsets[p], high))
        start = min(start, high)
        end = max(start, min(end, high))
        out[p] = PartitionRange(p, start, end)
    return out


def shadow_prefix(run: str, template: str = DEFAULT_PREFIX) -> str:
    """The shadow topic prefix of a run: ``template`` with ``{run}`` replaced (``rag.eval.run1.``).

    Raises:
        ConfigError: the run name or the prefix has characters Kafka topic names cannot have, or is empty.
    """
    if not run or not _TOPIC_CHARS.match(run):
        raise ConfigError(f"bad run name {run!r}: use letters, digits, '.', '_' and '-'")
    prefix = template.replace("{run}", run)
    if not prefix or not _TOPIC_CHARS.match(prefix):
        raise ConfigError(f"bad shadow prefix {prefix!r}: use letters, digits, '.', '_' and '-'")
    return prefix


def shadow_topic(source: str, prefix: str, live_prefix: str = "") -> str:
    """The shadow topic of a source topic: ``prefix`` + the source name without the live prefix.

    Raises:
        ConfigError: the result equals the source (replaying into the live topic) or is too long.
    """
    base = source[len(live_prefix) :] if live_prefix and source.startswith(live_prefix) else source
    target = prefix + base
    if target == source:
        raise ConfigError(f"the shadow topic would be the source topic {source!r}; give a non-empty prefix")
    if len(target) > _MAX_TOPIC_LEN:
        raise ConfigError(f"shadow topic name {target!r} is longer than {_MAX_TOPIC_LEN} characters")
    return target


def _valid_topic(name: str) -> bool:
    return bool(name) and len(name) <= _MAX_TOPIC_LEN and bool(_TOPIC_CHARS.match(name))


# --------------------------------------------------------------------------- report


@dataclass
class PartitionReport:
    """What happened to one source partition: its range, records read, kept, delivered and failed."""

    partition: int
    start: int
    end: int
    read: int = 0
    selected: int = 0
    produced: int = 0
    failed: int = 0

    @property
    def count(self) -> int:
        """Offsets in ``[start, end)``."""
        return max(0, self.end - self.start)


@dataclass
class ReplayReport:
    """The outcome of one replay.

    Attributes:
        run: run name (``""`` in a dry run without one).
        source_topic: topic read.
        target_topic: shadow topic written (``""`` in a dry run without a run name).
        dry_run: nothing was produced.
        partitions: per-partition reports, by partition number.
        seconds: wall time of the replay (s).
        missing_request_ids: requested ids not found in the range (request-id selection only).
        topics_created: shadow topics created by this replay.
        queue_full_waits: times the producer's local queue was full and the replay waited for delivery
            reports (records are never dropped for it).
    """

    run: str
    source_topic: str
    target_topic: str
    dry_run: bool
    partitions: list[PartitionReport] = field(default_factory=list)
    seconds: float = 0.0
    missing_request_ids: list[uuid.UUID] = field(default_factory=list)
    topics_created: list[str] = field(default_factory=list)
    queue_full_waits: int = 0

    @property
    def in_range(self) -> int:
        """Offsets in all ranges."""
        return sum(p.count for p in self.partitions)

    @property
    def read(self) -> int:
        """Records read from the source."""
        return sum(p.read for p in self.partitions)

    @property
    def selected(self) -> int:
        """Records that passed the filters (request ids, times) and were handed to the producer."""
        return sum(p.selected for p in self.partitions)

    @property
    def produced(self) -> int:
        """Records with a successful delivery report."""
        return sum(p.produced for p in self.partitions)

    @property
    def failed(self) -> int:
        """Records whose delivery failed or was not confirmed."""
        return sum(p.failed for p in self.partitions)

    @property
    def ok(self) -> bool:
        """True when every selected record was delivered (always true for a dry run)."""
        return self.failed == 0 and (self.dry_run or self.produced == self.selected)


# --------------------------------------------------------------------------- Kafka


def replay(
    settings: Settings,
    plan: ReplayPlan,
    *,
    run: str | None = None,
    prefix: str | None = None,
    topics_file: Path | None = None,
    dry_run: bool = False,
    progress: bool = False,
    producer_overrides: Mapping[str, Any] | None = None,
    stall_timeout_s: float = 60.0,
) -> ReplayReport:
    """Replay the planned range of a topic into its shadow topic.

    Args:
        settings: Kafka settings and the live topic names (the source defaults to the requests topic).
        plan: what to replay (:func:`build_plan`).
        run: run name; required unless ``dry_run``. It goes into the ``replay_run`` header and the prefix.
        prefix: shadow prefix template (``{run}`` is replaced); default ``rag.eval.{run}.``.
        topics_file: topics.yaml whose topics are created with the prefix when missing; default the
            repository's ``topics.yaml`` when present (otherwise only the target topic is created, with the
            source's partition count).
        dry_run: only resolve the ranges (start, end, count per partition); produce nothing, create nothing.
        progress: show a progress bar on stderr.
        producer_overrides: extra librdkafka producer properties (e.g. ``queue.buffering.max.messages``).
        stall_timeout_s: seconds without any progress (no record read, no delivery report) before giving up.

    Returns:
        A :class:`ReplayReport`; check ``report.ok`` / ``report.failed`` for delivery failures.

    Raises:
        ConfigError: bad run name or prefix, unknown source topic or partition, no run name without
            ``dry_run``, or shadow topic creation failed.
        ServiceUnavailableError: no broker answers.
        RetryableError: the replay made no progress for ``stall_timeout_s`` seconds (broker gone, records
            stuck behind an open transaction), or a Kafka call failed; records already delivered stay delivered.
    """
    t0 = time.monotonic()
    check_broker(settings.kafka)
    source = plan.topic or settings.topics.name("requests")
    target = ""
    pfx = ""
    if run is not None or not dry_run:
        if run is None:
            raise ConfigError("a run name is required (--run NAME)")
        pfx = shadow_prefix(run, prefix or DEFAULT_PREFIX)
        target = shadow_topic(source, pfx, settings.topics.prefix)
    consumer = Consumer(_consumer_config(settings))
    try:
        ranges = _resolve(consumer, source, plan)
        report = ReplayReport(
            run=run or "",
            source_topic=source,
            target_topic=target,
            dry_run=dry_run,
            partitions=[PartitionReport(r.partition, r.start, r.end) for r in ranges.values()],
        )
        log.info(
            "replay plan source=%s target=%s partitions=%d in_range=%d dry_run=%s",
            source,
            target or "-",
            len(ranges),
            report.in_range,
            dry_run,
        )
        if dry_run:
            report.seconds = time.monotonic() - t0
            return report
        admin = AdminClient(base_config(settings.kafka))
        report.topics_created = _ensure_shadow_topics(admin, source, target, pfx, topics_file)
        conf = producer_config(settings.kafka)
        conf.update(producer_overrides or {})
        producer = Producer(conf)
        _Copier(consumer, producer, plan, report, run or "", stall_timeout_s).run(progress)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else exc
        raise RetryableError(f"replay of {source!r} failed: {err.str() if hasattr(err, 'str') else err}") from exc
    finally:
        consumer.close()
    report.seconds = time.monotonic() - t0
    log.info(
        "replay done run=%s target=%s read=%d selected=%d produced=%d failed=%d seconds=%.2f",
        report.run,
        target,
        report.read,
        report.selected,
        report.produced,
        report.failed,
        report.seconds,
    )
    return report


def _consumer_config(settings: Settings) -> dict[str, Any]:
    conf = base_config(settings.kafka)
    conf.update(
        {
            # librdkafka wants a group.id; assign() never joins it and nothing is ever committed to it.
            "group.id": f"ragstream-replay-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",  # a start offset deleted by retention meanwhile: the next one
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 100,
        }
    )
    return conf


def _resolve(consumer: Consumer, topic: str, plan: ReplayPlan, timeout_s: float = 10.0) -> dict[int, PartitionRange]:
    """Watermarks (and time offsets) of the source, planned into ranges. Raises ConfigError if it is missing."""
    meta = consumer.list_topics(topic, timeout=timeout_s)
    tmeta = meta.topics.get(topic)
    if tmeta is None or tmeta.error is not None or not tmeta.partitions:
        reason = tmeta.error.str() if tmeta is not None and tmeta.error is not None else "no partitions"
        raise ConfigError(f"source topic {topic!r} not found: {reason}")
    parts = sorted(tmeta.partitions)
    watermarks: dict[int, tuple[int, int]] = {}
    for p in parts:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s, cached=False)
        watermarks[p] = (low, high)

    def for_time(dt: datetime | None) -> dict[int, int] | None:
        if dt is None:
            return None
        ms = to_epoch_ms(dt)
        found = consumer.offsets_for_times([TopicPartition(topic, p, ms) for p in parts], timeout=timeout_s)
        return {tp.partition: tp.offset for tp in found}

    return plan_ranges(
        watermarks,
        from_offset=plan.from_offset,
        offsets=plan.offsets,
        since_offsets=for_time(plan.since),
        until_offsets=for_time(plan.until),
    )


def _ensure_shadow_topics(
    admin: AdminClient, source: str, target: str, prefix: str, topics_file: Path | None
) -> list[str]:
    """Create the prefixed topics of topics.yaml and the target topic when missing; return those created."""
    path = topics_file
    if path is None:
        default = Path(__file__).resolve().parent.parent / "topics.yaml"
        path = default if default.exists() else None
    spec = load_topics(path).with_prefix(prefix) if path is not None else TopicsFile(topics=[])
    if target not in {t.name for t in spec.topics}:
        meta = admin.list_topics(source, timeout=10.0).topics[source]
        spec = TopicsFile(
            topics=[*spec.topics, TopicSpec(name=target, partitions=len(meta.partitions))],
            consumer_groups=dict(spec.consumer_groups),
        )
    report = apply_topics(admin, spec)
    for line in report.drift:
        log.warning("shadow topic drift (left as is): %s", line)
    for name in report.created:
        log.info("created shadow topic %s", name)
    return list(report.created)


def _headers_of(msg: Message) -> list[tuple[str, str | bytes | None]]:
    """A consumed record's headers as a list of pairs (duplicates and order kept)."""
    raw = msg.headers()
    if raw is None:
        return []
    if isinstance(raw, dict):  # produced-side form; consumed headers are a list
        return list(raw.items())
    return list(raw)


def _request_id_of(msg: Message) -> uuid.UUID | None:
    """The request id of a record: its ``request_id`` header, else the ``request_id`` field of its JSON value."""
    for name, value in _headers_of(msg):
        if name == "request_id" and value:
            try:
                return uuid.UUID(value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value)
            except ValueError:
                break
    raw = msg.value()
    if not raw:
        return None
    try:
        obj = json.loads(raw)
        return uuid.UUID(str(obj["request_id"])) if isinstance(obj, dict) and obj.get("request_id") else None
    except (ValueError, KeyError, TypeError):
        return None


class _Copier:
    """Reads the assigned ranges and produces each selected record; fills in the report."""

    def __init__(
        self,
        consumer: Consumer,
        producer: Producer,
        plan: ReplayPlan,
        report: ReplayReport,
        run: str,
        stall_timeout_s: float,
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.plan = plan
        self.report = report
        self.run_name = run
        self.stall_timeout_s = stall_timeout_s
        self.by_partition = {p.partition: p for p in report.partitions}
        self.remaining = {p.partition: p for p in report.partitions if p.count > 0}
        self.found: set[uuid.UUID] = set()
        self.last_progress = time.monotonic()
        self.since_ms = to_epoch_ms(plan.since) if plan.since is not None else None
        self.until_ms = to_epoch_ms(plan.until) if plan.until is not None else None
        self._logged_failures = 0

    def run(self, progress: bool) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(
            TextColumn("replay"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not progress,
        )
        topic = self.report.source_topic
        with bar:
            task = bar.add_task("replay", total=self.report.in_range)
            if self.remaining:
                # Assign at the start offsets directly: no seek on a partition that is not yet fetchable.
                self.consumer.assign([TopicPartition(topic, p, r.start) for p, r in self.remaining.items()])
            while self.remaining:
                msgs = self.consumer.consume(500, timeout=0.5)
                if msgs:
                    self.last_progress = time.monotonic()
                for msg in msgs:
                    self._handle(msg)
                bar.update(task, completed=self._offsets_done())
                self.producer.poll(0)
                self._check_stall()
            self.consumer.unassign()
            self._flush()
            bar.update(task, completed=self.report.in_range)
        self.report.missing_request_ids = (
            sorted(self.plan.request_ids - self.found, key=str) if self.plan.request_ids is not None else []
        )

    def _offsets_done(self) -> int:
        """Offsets covered so far (finished partitions count whole), for the progress bar."""
        return sum(p.count if p.partition not in self.remaining else p.read for p in self.report.partitions)

    def _handle(self, msg: Message) -> None:
        """Process one consumed message or event (end of partition, error)."""
        p = msg.partition()
        err = msg.error()
        rng = self.remaining.get(p) if p is not None else None
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                # The log end reached is at or past the captured end: nothing more to read (gaps included).
                if rng is not None and (msg.offset() or 0) >= rng.end:
                    self._done(rng)
                return
            if err.fatal():
                raise KafkaException(err)
            log.warning("consume error topic=%s partition=%s: %s", msg.topic(), p, err)
            return
        if rng is None:
            return
        offset = msg.offset() or 0
        if offset >= rng.end:  # past the range (a gap ended it): done without this record
            self._done(rng)
            return
        rng.read += 1
        if self._selected(msg):
            rng.selected += 1
            self._produce(msg, rng)
        if offset >= rng.end - 1:
            self._done(rng)

    def _done(self, rng: PartitionReport) -> None:
        """Mark a partition finished and stop fetching it."""
        del self.remaining[rng.partition]
        self.consumer.pause([TopicPartition(self.report.source_topic, rng.partition)])
        log.debug("replay partition done partition=%d read=%d", rng.partition, rng.read)

    def _selected(self, msg: Message) -> bool:
        if self.since_ms is not None or self.until_ms is not None:
            ts_type, ts = msg.timestamp()
            if ts_type:
                if self.since_ms is not None and ts < self.since_ms:
                    return False
                if self.until_ms is not None and ts >= self.until_ms:
                    return False
        if self.plan.request_ids is not None:
            rid = _request_id_of(msg)
            if rid is None or rid not in self.plan.request_ids:
                return False
            self.found.add(rid)
        return True

    def _produce(self, msg: Message, rng: PartitionReport) -> None:
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        headers = [(k, v) for k, v in _headers_of(msg) if k not in REPLAY_HEADERS]
        headers.append(("replay_run", self.run_name))
        headers.append(("replay_source", f"{topic}/{partition}/{offset}"))
        ts_type, ts = msg.timestamp()
        if ts_type:
            headers.append(("replay_source_timestamp", str(ts)))

        def on_delivery(err: KafkaError | None, out: Message) -> None:
            self.last_progress = time.monotonic()
            if err is None:
                rng.produced += 1
                return
            rng.failed += 1
            if self._logged_failures < 10:
                self._logged_failures += 1
                log.error(
                    "replay delivery failed target=%s source=%s/%s/%s: %s",
                    self.report.target_topic,
                    topic,
                    partition,
                    offset,
                    err,
                )

        while True:
            try:
                self.producer.produce(
                    self.report.target_topic,
                    value=msg.value(),
                    key=msg.key(),
                    headers=headers,
                    on_delivery=on_delivery,
                )
                return
            except BufferError:  # local queue full: serve delivery reports until there is room, never drop
                self.report.queue_full_waits += 1
                self.producer.poll(0.1)
                self._check_stall()

    def _check_stall(self) -> None:
        idle = time.monotonic() - self.last_progress
        if idle > self.stall_timeout_s:
            raise RetryableError(
                f"replay made no progress for {idle:.0f} s (partitions left: {sorted(self.remaining)}, "
                f"unconfirmed deliveries: {len(self.producer)})"
            )

    def _flush(self) -> None:
        """Wait for every delivery report; records never confirmed within the stall bound count as failed."""
        while len(self.producer) > 0:
            before = len(self.producer)
            self.producer.flush(1.0)
            if len(self.producer) < before:
                self.last_progress = time.monotonic()
            elif time.monotonic() - self.last_progress > self.stall_timeout_s:
                break
        left = len(self.producer)
        if left:
            log.error("replay: %d records not confirmed within %.0f s; counted as failed", left, self.stall_timeout_s)
            for rng in self.report.partitions:
                rng.failed += max(0, rng.selected - rng.produced - rng.failed)
