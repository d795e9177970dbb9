"""In-order offset bookkeeping of the worker loop: which offset of a partition may be stored (committed).

An offset is stored only when every message before it in its partition is finished (DESIGN.md §6: offsets
follow success); the stored offset is the next one to read.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Sequence


class OffsetTracker:
    """In-order offset bookkeeping per partition (thread-safe).

    ``add`` records a consumed offset; ``finish`` marks it done and returns the offset to store (the next
    offset to read) when the lowest unfinished offset of its partition moved, else ``None``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, int], collections.deque[int]] = {}
        self._done: dict[tuple[str, int], set[int]] = {}
        self._cond = threading.Condition(self._lock)

    def add(self, topic: str, partition: int, offset: int) -> None:
        """Record that ``offset`` was handed to the handler."""
        with self._lock:
            self._pending.setdefault((topic, partition), collections.deque()).append(offset)
            self._done.setdefault((topic, partition), set())

    def finish(self, topic: str, partition: int, offset: int) -> int | None:
        """Mark ``offset`` finished; return the new offset to store, or ``None`` if it did not move."""
        with self._lock:
            tp = (topic, partition)
            pending = self._pending.get(tp)
            if pending is None:  # partition revoked meanwhile
                return None
            done = self._done[tp]
            done.add(offset)
            moved: int | None = None
            while pending and pending[0] in done:
                moved = pending.popleft()
                done.discard(moved)
            if moved is not None:
                self._cond.notify_all()
                return moved + 1
            return None

    def in_flight(self, partitions: Sequence[tuple[str, int]] | None = None) -> int:
        """Unfinished messages, over all partitions or the given ones."""
        with self._lock:
            keys = self._pending.keys() if partitions is None else partitions
            return sum(len(self._pending.get(k, ())) for k in keys)

    def wait_drained(self, partitions: Sequence[tuple[str, int]], timeout_s: float) -> bool:
        """Block until the given partitions have nothing in flight, or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while any(self._pending.get(k) for k in partitions):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
            return True

    def drop(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Forget revoked partitions; late finishes for them are ignored."""
        with self._lock:
            for k in partitions:
                self._pending.pop(k, None)
                self._done.pop(k, None)
            self._cond.notify_all()
