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
* **Paced when asked.** By default records are produced as fast as they are read (a burst); ``Pace(per_s=N)``
  produces N records per second, ``Pace(original=True)`` reads the range first and produces it with the spacing
  of the records' own timestamps (:class:`workers.evaluation.replay_plan.Pace`).
* **Recorded.** A replay into a run appends an entry to the run's log (:mod:`workers.evaluation.runlog`): records
  delivered, distinct request ids, source, pace. ``ragstream shadow`` reads it to know what to answer.

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
import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from workers.contracts.errors import ConfigError, RetryableError
from workers.contracts.topics import TopicsFile, TopicSpec, load_topics
from workers.evaluation import runlog
from workers.evaluation.replay_plan import (
    DEFAULT_PREFIX,
    REPLAY_HEADERS,
    Pace,
    PartitionRange,
    PartitionReport,
    ReplayPlan,
    ReplayReport,
    plan_ranges,
    shadow_prefix,
    shadow_topic,
    to_epoch_ms,
)
from workers.kafka.admin import admin_client, apply_topics, check_broker
from workers.kafka.producer import KafkaProducer
from workers.kafka.reader import reader, watermarks
from workers.settings import Settings

log = logging.getLogger(__name__)


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
    pace: Pace = Pace(),
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
        pace: how fast to produce (:class:`Pace`: a burst by default, N records/s, or the original spacing).

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
    consumer = reader(settings.kafka, "replay", **{"auto.offset.reset": "earliest", "enable.partition.eof": True})
    try:
        ranges = _resolve(consumer, source, plan)
        report = ReplayReport(
            run=run or "",
            source_topic=source,
            target_topic=target,
            dry_run=dry_run,
            partitions=[PartitionReport(r.partition, r.start, r.end) for r in ranges.values()],
            pace=str(pace),
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
        report.topics_created = _ensure_shadow_topics(settings, source, target, pfx, topics_file)
        producer = KafkaProducer(settings.kafka, max_wait_s=stall_timeout_s, overrides=producer_overrides)
        _Copier(consumer, producer, plan, report, run or "", stall_timeout_s, pace).run(progress)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else exc
        raise RetryableError(f"replay of {source!r} failed: {err.str() if hasattr(err, 'str') else err}") from exc
    finally:
        consumer.close()
    report.seconds = time.monotonic() - t0
    if run is not None:  # the shadow run learns from its log how many requests to answer
        runlog.append(
            settings.kafka,
            pfx,
            runlog.RunLogEntry(
                kind="replay",
                run=run,
                source_topic=source,
                produced=report.produced,
                request_ids=report.request_ids,
                pace=report.pace,
            ),
        )
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


def _resolve(consumer: Consumer, topic: str, plan: ReplayPlan, timeout_s: float = 10.0) -> dict[int, PartitionRange]:
    """Watermarks (and time offsets) of the source, planned into ranges. Raises ConfigError if it is missing."""
    try:
        marks = watermarks(consumer, topic, timeout_s=timeout_s)
    except ConfigError as exc:
        raise ConfigError(f"source {exc}") from None
    parts = sorted(marks)

    def for_time(dt: datetime | None) -> dict[int, int] | None:
        if dt is None:
            return None
        ms = to_epoch_ms(dt)
        found = consumer.offsets_for_times([TopicPartition(topic, p, ms) for p in parts], timeout=timeout_s)
        return {tp.partition: tp.offset for tp in found}

    return plan_ranges(
        marks,
        from_offset=plan.from_offset,
        offsets=plan.offsets,
        since_offsets=for_time(plan.since),
        until_offsets=for_time(plan.until),
    )


def _ensure_shadow_topics(
    settings: Settings, source: str, target: str, prefix: str, topics_file: Path | None
) -> list[str]:
    """Create the prefixed topics of topics.yaml and the target topic when missing; return those created."""
    path = topics_file
    if path is None:
        default = Path(__file__).resolve().parents[2] / "topics.yaml"
        path = default if default.exists() else None
    spec = load_topics(path).with_prefix(prefix) if path is not None else TopicsFile(topics=[])
    admin = admin_client(settings.kafka)
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
        producer: KafkaProducer,
        plan: ReplayPlan,
        report: ReplayReport,
        run: str,
        stall_timeout_s: float,
        pace: Pace = Pace(),
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
        self.pace = pace
        self.delivered_ids: set[uuid.UUID] = set()
        self.held: list[tuple[int, int, int, Message, PartitionReport]] = []  # original pace: read first
        self.sent = 0
        self.pace_start: float | None = None

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
                if not self.pace.original:
                    bar.update(task, completed=self._offsets_done())
                self.producer.poll(0)
                self._check_stall()
            self.consumer.unassign()
            if self.held:  # original spacing: produce what was read on the records' own schedule
                self.held.sort(key=lambda h: h[:3])
                first_ts = self.held[0][0]
                bar.update(task, total=len(self.held), completed=0)
                for i, (ts, _p, _o, msg, rng) in enumerate(self.held):
                    self._wait_turn(i, ts, first_ts)
                    self._produce(msg, rng)
                    bar.update(task, completed=i + 1)
                self.held.clear()
            self._flush()
            bar.update(task, completed=self.report.in_range)
        self.report.missing_request_ids = (
            sorted(self.plan.request_ids - self.found, key=str) if self.plan.request_ids is not None else []
        )
        self.report.request_ids = len(self.delivered_ids)

    def _wait_turn(self, index: int, ts_ms: int | None, first_ts_ms: int | None) -> None:
        """Wait (serving delivery reports) until the ``index``-th record is due under the pace."""
        if self.pace_start is None:
            self.pace_start = time.monotonic()
        due = self.pace_start + self.pace.delay_s(index, ts_ms, first_ts_ms)
        while (left := due - time.monotonic()) > 0:
            self.producer.poll(min(left, 0.1))
        self.last_progress = time.monotonic()  # waiting for a record's turn is not a stall

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
            if self.pace.original:
                ts_type, ts = msg.timestamp()
                self.held.append((ts if ts_type else 0, msg.partition() or 0, offset, msg, rng))
            else:
                if self.pace.per_s is not None:
                    self._wait_turn(self.sent, None, None)
                self.sent += 1
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

        rid = _request_id_of(msg)

        def on_delivery(err: KafkaError | None, out: Message) -> None:
            self.last_progress = time.monotonic()
            if err is None:
                rng.produced += 1
                if rid is not None:
                    self.delivered_ids.add(rid)
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

        def on_wait() -> None:  # local queue full: delivery reports are served until there is room, never dropped
            self.report.queue_full_waits += 1
            self._check_stall()

        self.producer.produce(self.report.target_topic, msg.value(), msg.key(), headers, on_delivery, on_wait=on_wait)

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
