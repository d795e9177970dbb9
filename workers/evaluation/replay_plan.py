"""The pure part of ``ragstream replay``: what to replay (offsets, times, request ids) and the report (no Kafka).

:func:`build_plan` turns user input into a :class:`ReplayPlan`; :func:`plan_ranges` resolves it against a
topic's watermarks into per-partition ranges; :func:`shadow_prefix` and :func:`shadow_topic` name the shadow
topics. :mod:`workers.evaluation.replay` does the copying.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from workers.contracts.errors import ConfigError

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


_AGO_RE = re.compile(r"^(?P<n>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>s|m|min|h|d)$")
_UNIT_S = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """Parse a replay time: ISO 8601 with a timezone (``2026-11-30T10:00:00Z``), epoch milliseconds, or a
    duration back from now (``90s``, ``30m``, ``2h``, ``1d``: ``--since 1h`` is the last hour).

    Args:
        text: the time as the user wrote it.
        now: the present for durations (default: the clock).

    Raises:
        ConfigError: not a time, or an ISO time without a timezone.
    """
    t = text.strip()
    if t.isdigit():
        return datetime.fromtimestamp(int(t) / 1000.0, UTC)
    ago = _AGO_RE.match(t)
    if ago is not None:
        return (now or datetime.now(UTC)) - timedelta(seconds=float(ago["n"]) * _UNIT_S[ago["unit"]])
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        raise ConfigError(
            f"bad time {text!r} (expected ISO 8601 such as 2026-11-30T10:00:00Z, epoch ms, or a duration such as 1h)"
        ) from None
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


@dataclass(frozen=True)
class Pace:
    """How fast a replay produces: as fast as it reads (a burst), ``per_s`` records per second, or with the
    spacing the records originally had (their Kafka timestamps; the range is read first, then produced on
    that schedule)."""

    per_s: float | None = None
    original: bool = False

    def __str__(self) -> str:
        if self.original:
            return "original"
        return f"{self.per_s:g}/s" if self.per_s is not None else "burst"

    def delay_s(self, index: int, ts_ms: int | None, first_ts_ms: int | None) -> float:
        """Seconds after the start at which the ``index``-th record (0-based) is due; 0 for a burst."""
        if self.original:
            return 0.0 if ts_ms is None or first_ts_ms is None else max(0.0, (ts_ms - first_ts_ms) / 1000.0)
        if self.per_s is not None:
            return index / self.per_s
        return 0.0


def parse_pace(text: str | None) -> Pace:
    """Parse ``--rate``: ``None``/``burst`` (as fast as possible), ``original`` (the original spacing) or
    records per second (``5``, ``0.5``, ``20/s``).

    Raises:
        ConfigError: anything else, or a rate that is not positive.
    """
    if text is None or text.strip() in ("", "burst"):
        return Pace()
    t = text.strip().lower()
    if t == "original":
        return Pace(original=True)
    try:
        per_s = float(t.removesuffix("/s"))
    except ValueError:
        raise ConfigError(f"bad --rate {text!r}: records per second (e.g. 5), 'original' or 'burst'") from None
    if not per_s > 0 or per_s == float("inf"):
        raise ConfigError(f"bad --rate {text!r}: the rate must be a positive number of records per second")
    return Pace(per_s=per_s)


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
        request_ids: distinct request ids among the delivered records.
        pace: how fast it produced (``burst``, ``original``, ``N/s``).
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
    request_ids: int = 0
    pace: str = "burst"
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
