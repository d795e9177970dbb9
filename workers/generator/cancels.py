"""Which requests their clients gave up on: the cancels the generator has seen (pure asyncio, no Kafka).

The generator's ``app.py`` reads the control topic (group-less, from its end) and calls :meth:`Cancellations.cancel`
on the event loop for each cancel event; the generator stage asks :meth:`Cancellations.is_cancelled` before calling
the LLM and races each generation against :meth:`Cancellations.wait_cancelled`. A cancel is remembered for
``ttl_s`` seconds (the prompt may still be on its way through the retriever), at most ``max_entries`` of them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable


class Cancellations:
    """Cancelled request ids, remembered for a while, and the generations waiting on them.

    Args:
        ttl_s: seconds a cancel is remembered.
        max_entries: cancels remembered at most (the oldest are forgotten first).
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self, ttl_s: float = 3600.0, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._seen: OrderedDict[uuid.UUID, float] = OrderedDict()
        self._waiting: dict[uuid.UUID, asyncio.Event] = {}

    def cancel(self, request_id: uuid.UUID) -> None:
        """Record a cancel; a generation waiting on it is woken. Call it on the event loop's thread."""
        self._seen[request_id] = self.clock()
        self._seen.move_to_end(request_id)
        self._expire()
        event = self._waiting.get(request_id)
        if event is not None:
            event.set()

    def is_cancelled(self, request_id: uuid.UUID) -> bool:
        """True when a cancel for ``request_id`` was seen within ``ttl_s`` seconds."""
        self._expire()
        return request_id in self._seen

    async def wait_cancelled(self, request_id: uuid.UUID) -> None:
        """Return once ``request_id`` is cancelled (at once when it already is); cancel the wait to stop watching."""
        if self.is_cancelled(request_id):
            return
        event = self._waiting.setdefault(request_id, asyncio.Event())
        try:
            await event.wait()
        finally:
            if self._waiting.get(request_id) is event:
                del self._waiting[request_id]

    def _expire(self) -> None:
        now = self.clock()
        while self._seen:
            rid, at = next(iter(self._seen.items()))
            if now - at <= self.ttl_s and len(self._seen) <= self.max_entries:
                break
            del self._seen[rid]
