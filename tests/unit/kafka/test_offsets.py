"""OffsetTracker: the stored offset is the next to read, in order per partition, never past a gap."""

from __future__ import annotations

import threading

from workers.kafka.offsets import OffsetTracker


def test_in_order_finish_moves_offset() -> None:
    t = OffsetTracker()
    for o in (10, 11, 12):
        t.add("a", 0, o)
    assert t.finish("a", 0, 10) == 11
    assert t.finish("a", 0, 11) == 12
    assert t.finish("a", 0, 12) == 13
    assert t.in_flight() == 0


def test_out_of_order_finish_waits_for_gap() -> None:
    t = OffsetTracker()
    for o in (5, 6, 7):
        t.add("a", 0, o)
    assert t.finish("a", 0, 7) is None  # 5 and 6 still in flight
    assert t.finish("a", 0, 6) is None
    assert t.finish("a", 0, 5) == 8  # all three done: next to read is 8
    assert t.in_flight() == 0


def test_partitions_are_independent_and_drop_forgets() -> None:
    t = OffsetTracker()
    t.add("a", 0, 1)
    t.add("a", 1, 100)
    assert t.in_flight([("a", 1)]) == 1
    t.drop([("a", 1)])
    assert t.finish("a", 1, 100) is None  # revoked: ignored
    assert t.finish("a", 0, 1) == 2


def test_wait_drained_returns_when_finished_from_another_thread() -> None:
    t = OffsetTracker()
    t.add("a", 0, 1)
    threading.Timer(0.05, lambda: t.finish("a", 0, 1)).start()
    assert t.wait_drained([("a", 0)], timeout_s=2.0)
    t.add("a", 0, 2)
    assert not t.wait_drained([("a", 0)], timeout_s=0.05)
