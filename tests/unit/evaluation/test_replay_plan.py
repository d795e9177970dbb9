"""Replay planning without Kafka: offset specs, times, request ids, and ranges from watermarks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from workers.contracts.errors import ConfigError
from workers.evaluation.replay_plan import (
    OffsetRange,
    Pace,
    PartitionRange,
    PartitionReport,
    ReplayReport,
    build_plan,
    load_request_ids,
    parse_offsets,
    parse_pace,
    parse_request_ids,
    parse_time,
    plan_ranges,
    shadow_prefix,
    shadow_topic,
    time_offset,
)


def test_parse_offsets_forms() -> None:
    assert parse_offsets("0:5-9, 1:0-,2:-100,3:7,4,5:-") == {
        0: OffsetRange(5, 10),
        1: OffsetRange(0, None),
        2: OffsetRange(None, 101),
        3: OffsetRange(7, 8),
        4: OffsetRange(None, None),
        5: OffsetRange(None, None),
    }


@pytest.mark.parametrize("spec", ["", "x:1", "0:a-b", "0:9-5", "-1:0-", "0:1-2,0:3-", "0:1-2-3"])
def test_parse_offsets_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_offsets(spec)


def test_parse_time() -> None:
    assert parse_time("2026-11-30T10:00:00Z") == datetime(2026, 11, 30, 10, tzinfo=UTC)
    assert parse_time("2026-11-30T11:00:00+01:00") == datetime(2026, 11, 30, 10, tzinfo=UTC)
    assert parse_time("1000") == datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)
    with pytest.raises(ConfigError, match="timezone"):
        parse_time("2026-11-30T10:00:00")
    with pytest.raises(ConfigError):
        parse_time("yesterday")


def test_request_ids_from_text_and_file(tmp_path: Path) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    assert parse_request_ids(f"{a}, {b}") == {a, b}
    f = tmp_path / "ids.txt"
    f.write_text(f"# wanted\n{a}\n\n{b}  # second\n", encoding="utf-8")
    assert load_request_ids(str(f)) == {a, b}
    assert load_request_ids(str(a)) == {a}
    with pytest.raises(ConfigError):
        parse_request_ids("not-a-uuid")
    with pytest.raises(ConfigError):
        parse_request_ids("# nothing\n")


def test_build_plan_validates() -> None:
    plan = build_plan(from_offset=5, since="2026-11-30T10:00:00Z", request_ids=[str(uuid.UUID(int=1))])
    assert plan.from_offset == 5 and plan.since is not None and plan.request_ids == {uuid.UUID(int=1)}
    with pytest.raises(ConfigError, match="not both"):
        build_plan(from_offset=1, offsets="0:1-")
    with pytest.raises(ConfigError):
        build_plan(from_offset=-1)
    with pytest.raises(ConfigError, match="before"):
        build_plan(since="2026-11-30T11:00:00Z", until="2026-11-30T10:00:00Z")
    with pytest.raises(ConfigError):
        build_plan(topic="bad topic")


WM = {0: (0, 10), 1: (3, 7), 2: (0, 0)}


def test_plan_whole_topic_by_default() -> None:
    assert plan_ranges(WM) == {0: PartitionRange(0, 0, 10), 1: PartitionRange(1, 3, 7), 2: PartitionRange(2, 0, 0)}


def test_plan_from_offset_clamps_to_watermarks() -> None:
    r = plan_ranges(WM, from_offset=5)
    assert (r[0].start, r[0].end, r[0].count) == (5, 10, 5)
    assert (r[1].start, r[1].end, r[1].count) == (5, 7, 2)
    assert r[2].count == 0
    past = plan_ranges(WM, from_offset=50)
    assert all(p.count == 0 for p in past.values()) and past[0].start == 10


def test_plan_offsets_per_partition() -> None:
    r = plan_ranges(WM, offsets=parse_offsets("0:5-8,1:0-"))
    assert (r[0].start, r[0].end) == (5, 9)
    assert (r[1].start, r[1].end) == (3, 7)  # below the low watermark: from low
    assert r[2].count == 0  # not listed
    with pytest.raises(ConfigError, match="do not exist"):
        plan_ranges(WM, offsets=parse_offsets("7:0-"))


def test_plan_times_past_the_end_give_nothing() -> None:
    # offsets_for_times answers -1 (OFFSET_END) when no record is at or after the time.
    r = plan_ranges(WM, since_offsets={0: -1, 1: -1, 2: -1})
    assert all(p.count == 0 for p in r.values())
    assert r[0].start == 10  # at the captured end, never "follow the tail"
    r = plan_ranges(WM, since_offsets={0: 4, 1: 5, 2: -1}, until_offsets={0: 8, 1: -1, 2: -1})
    assert (r[0].start, r[0].end) == (4, 8)
    assert (r[1].start, r[1].end) == (5, 7)
    assert time_offset(-1, 10) == 10 and time_offset(3, 10) == 3 and time_offset(12, 10) == 10


def test_plan_intersection_never_inverts() -> None:
    r = plan_ranges({0: (0, 10)}, from_offset=8, until_offsets={0: 3})
    assert r[0].start == 8 and r[0].end == 8 and r[0].count == 0


def test_shadow_names() -> None:
    prefix = shadow_prefix("run1")
    assert prefix == "rag.eval.run1."
    assert shadow_topic("rag.requests", prefix) == "rag.eval.run1.rag.requests"
    assert shadow_topic("live.rag.requests", prefix, live_prefix="live.") == "rag.eval.run1.rag.requests"
    assert shadow_prefix("r", "shadow-{run}-") == "shadow-r-"
    with pytest.raises(ConfigError):
        shadow_prefix("bad name")
    with pytest.raises(ConfigError):
        shadow_prefix("")
    with pytest.raises(ConfigError, match="source topic"):
        shadow_topic("rag.requests", "")


def test_report_totals() -> None:
    rep = ReplayReport(
        run="r",
        source_topic="a",
        target_topic="b",
        dry_run=False,
        partitions=[PartitionReport(0, 0, 5, read=5, selected=5, produced=5), PartitionReport(1, 2, 4, read=2)],
    )
    assert (rep.in_range, rep.read, rep.selected, rep.produced, rep.failed, rep.ok) == (7, 7, 5, 5, 0, True)
    rep.partitions[1].selected, rep.partitions[1].failed = 2, 2
    assert not rep.ok


def test_times_back_from_now() -> None:
    now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    assert parse_time("1h", now) == datetime(2026, 12, 6, 11, 0, tzinfo=UTC)
    assert parse_time("30m", now) == datetime(2026, 12, 6, 11, 30, tzinfo=UTC)
    assert parse_time("90s", now) == datetime(2026, 12, 6, 11, 58, 30, tzinfo=UTC)
    assert parse_time("2d", now) == datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    for bad in ("1 hour", "h", "-1h", "1w"):
        with pytest.raises(ConfigError):
            parse_time(bad, now)


def test_pace_burst_rate_and_original_spacing() -> None:
    assert parse_pace(None) == Pace() and str(parse_pace("burst")) == "burst"
    assert parse_pace("5") == Pace(per_s=5.0) and str(parse_pace("20/s")) == "20/s"
    assert parse_pace("original") == Pace(original=True) and str(Pace(original=True)) == "original"
    for bad in ("0", "-3", "fast", "inf"):
        with pytest.raises(ConfigError):
            parse_pace(bad)
    assert [Pace(per_s=4.0).delay_s(i, None, None) for i in range(3)] == [0.0, 0.25, 0.5]
    original = Pace(original=True)
    assert original.delay_s(7, 1_000_500, 1_000_000) == 0.5  # half a second after the first record
    assert original.delay_s(0, None, 1_000_000) == 0.0
    assert Pace().delay_s(1000, 5, 0) == 0.0
