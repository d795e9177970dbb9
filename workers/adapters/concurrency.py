"""Bounds on LLM requests in flight: a fixed limit, or one that adapts to what the server tells us.

Pure logic plus asyncio (no HTTP, no Kafka). Each LLM adapter (:class:`~workers.adapters.llm_server.LLMServerClient`,
:class:`~workers.adapters.llm_engine.EngineLLM`) holds one limiter, built by :func:`build_limiter`; each call runs
inside :meth:`ConcurrencyLimiter.slot` and reports its outcome there.

:class:`AdaptiveLimiter` combines two classic congestion-control rules:

* **Latency growth (TCP Vegas, as in Netflix concurrency-limits' ``VegasLimit``).** Time to first token
  (TTFT) is the server's queueing signal: a request that has to wait for a batch slot starts later. With
  ``no_load`` the lowest recent TTFT and ``ttft`` a smoothed recent TTFT, the requests queued at the server
  are estimated as ``queue = limit * (1 - no_load / ttft)``. Below ``alpha`` the limit grows by
  ``1 / limit`` per sample (about +1 per round of requests); above ``beta`` it shrinks by ``1 / limit`` per
  sample; in between it holds. ``alpha = 3 log10(limit)`` and ``beta = 6 log10(limit)`` as in
  ``VegasLimit``, so the server keeps a small queue: its batch never idles while our next request is on the
  wire, yet requests do not pile up. Until the first sign of congestion the limit grows by 1 per sample
  (slow start: it doubles per round), so a large server is found quickly. The limit only grows while
  callers keep all its slots busy (RFC 7661), so a quiet period does not inflate it.
* **Overload (AIMD, as in TCP Reno and concurrency-limits' ``AIMDLimit``).** An HTTP 429 multiplies the
  limit by ``backoff_ratio`` (0.75), at most once per round: 429s of requests that started before the last
  decrease do not decrease it again, so a burst of rejections is one signal.

The limit stays within ``[min_limit, max_limit]``. TTFT rather than the whole call time is used because it
does not depend on how many tokens an answer has. ``no_load`` is the minimum over the last one or two
windows of ``min_window`` samples, so it follows a server whose speed changes.

References: L. Brakmo, L. Peterson, "TCP Vegas: End to End Congestion Avoidance on a Global Internet",
IEEE JSAC 1995; Netflix concurrency-limits (``com.netflix.concurrency.limits.limit.VegasLimit``,
``AIMDLimit``, ``Gradient2Limit``), https://github.com/Netflix/concurrency-limits.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from workers.settings import LLMSettings

#: What one call reports back: success with its TTFT, overload (429), or anything else (no signal).
Outcome = Literal["ok", "overloaded", "ignore"]


@dataclass
class Ticket:
    """One granted slot.

    Attributes:
        started_at: monotonic time (s) the slot was granted.
        outcome: set by the caller before leaving :meth:`ConcurrencyLimiter.slot`; default "ignore".
        ttft_s: time to first token of the call (s), with outcome "ok".
    """

    started_at: float
    outcome: Outcome = "ignore"
    ttft_s: float | None = None

    def ok(self, ttft_s: float) -> None:
        """Report a successful call and its time to first token (seconds)."""
        self.outcome = "ok"
        self.ttft_s = ttft_s

    def overloaded(self) -> None:
        """Report that the server rejected the call as overloaded (HTTP 429)."""
        self.outcome = "overloaded"


class ConcurrencyLimiter(Protocol):
    """What :class:`~workers.adapters.llm_server.LLMServerClient` needs from a limiter."""

    @property
    def limit(self) -> int:
        """Current bound on calls in flight."""
        ...

    @property
    def in_flight(self) -> int:
        """Calls holding a slot now."""
        ...

    def slot(self) -> contextlib.AbstractAsyncContextManager[Ticket]:
        """Wait for a slot; the caller reports the outcome on the ticket before leaving."""
        ...


class _Slots:
    """A FIFO gate of ``limit()`` slots whose size may change at any time."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self.in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        if not self._waiters and self.in_flight < self._limit():
            self.in_flight += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():  # granted just before the cancellation landed
                self.release()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    def release(self) -> None:
        self.in_flight -= 1
        self.wake()

    @property
    def demand(self) -> int:
        """Calls holding or waiting for a slot."""
        return self.in_flight + len(self._waiters)

    def wake(self) -> None:
        """Grant slots to waiters while the (possibly raised) limit allows."""
        while self._waiters and self.in_flight < self._limit():
            fut = self._waiters.popleft()
            if not fut.done():
                self.in_flight += 1
                fut.set_result(None)


class _SlotLimiter:
    """What both limiters share: FIFO slots under the current ``limit``, a :class:`Ticket` per call, the ticket's
    outcome handed to :meth:`_settle` when the call leaves its slot."""

    _clock: Callable[[], float]
    _slots: _Slots

    @property
    def in_flight(self) -> int:
        """Calls holding a slot now."""
        return self._slots.in_flight

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[Ticket]:
        """Wait for a slot (FIFO); on leaving, the ticket's outcome goes to :meth:`_settle`."""
        await self._slots.acquire()
        ticket = Ticket(self._clock())
        try:
            yield ticket
        finally:
            self._settle(ticket)
            self._slots.release()

    def _settle(self, ticket: Ticket) -> None:
        """Act on a finished call's outcome (default: nothing)."""


class FixedLimiter(_SlotLimiter):
    """A fixed bound on calls in flight (a semaphore with the limiter interface; outcomes are ignored).

    Args:
        limit: calls in flight allowed (>= 1).

    Raises:
        ValueError: ``limit < 1``.
    """

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self._limit = limit
        self._clock = clock
        self._slots = _Slots(lambda: self._limit)

    @property
    def limit(self) -> int:
        """The fixed bound."""
        return self._limit


@dataclass
class AdaptiveStats:
    """Counters of an :class:`AdaptiveLimiter` (for logs, metrics and benchmarks).

    Attributes:
        samples: successful calls observed.
        overloads: 429s observed.
        decreases: multiplicative decreases applied (at most one per round).
        no_load_ttft_s: current no-load TTFT estimate (seconds; 0 before the first sample).
        ttft_s: smoothed recent TTFT (seconds).
        queue: last estimate of requests queued at the server.
        history: ``(monotonic time s, limit)`` after each change of the integer limit (last 1000).
    """

    samples: int = 0
    overloads: int = 0
    decreases: int = 0
    no_load_ttft_s: float = 0.0
    ttft_s: float = 0.0
    queue: float = 0.0
    history: collections.deque[tuple[float, int]] = field(default_factory=lambda: collections.deque(maxlen=1000))


class AdaptiveLimiter(_SlotLimiter):
    """Bound on LLM calls in flight adapted from TTFT growth (Vegas) and 429s (AIMD); see the module doc.

    Args:
        initial: starting limit (calls in flight), clamped to ``[min_limit, max_limit]``.
        min_limit: lowest limit (>= 1).
        max_limit: highest limit (the ceiling, e.g. ``RAG_LLM__MAX_IN_FLIGHT``).
        backoff_ratio: factor applied to the limit on a 429 (0 < r < 1).
        smoothing: weight of a new TTFT sample in the smoothed TTFT (0 < s <= 1).
        min_window: samples per window of the rolling no-load minimum.
        clock: monotonic clock in seconds (injectable for tests).

    Raises:
        ValueError: inconsistent bounds or factors.
    """

    def __init__(
        self,
        initial: int = 16,
        min_limit: int = 1,
        max_limit: int = 256,
        *,
        backoff_ratio: float = 0.75,
        smoothing: float = 0.2,
        min_window: int = 500,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= min_limit <= max_limit:
            raise ValueError(f"need 1 <= min_limit <= max_limit, got {min_limit}, {max_limit}")
        if not 0 < backoff_ratio < 1 or not 0 < smoothing <= 1 or min_window < 1:
            raise ValueError("need 0 < backoff_ratio < 1, 0 < smoothing <= 1 and min_window >= 1")
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.backoff_ratio = backoff_ratio
        self.smoothing = smoothing
        self.min_window = min_window
        self._clock = clock
        self._limit = float(min(max(initial, min_limit), max_limit))
        self._slow_start = True
        self._last_decrease = -math.inf
        self._min_cur = math.inf  # minimum TTFT of the current window (s)
        self._min_prev = math.inf  # ... and of the previous one
        self._in_window = 0
        self.stats = AdaptiveStats()
        self.stats.history.append((clock(), self.limit))
        self._slots = _Slots(lambda: self.limit)

    @property
    def limit(self) -> int:
        """Current bound on calls in flight (integer part of the internal float limit)."""
        return int(self._limit)

    def _settle(self, ticket: Ticket) -> None:
        """The finished call's outcome updates the limit (:meth:`observe`)."""
        self.observe(ticket)

    # -- the rule (synchronous, unit-testable) -------------------------------------------------------

    def observe(self, ticket: Ticket, demand: int | None = None) -> None:
        """Update the limit from one finished call (``ok`` with its TTFT, ``overloaded``, or ``ignore``).

        Args:
            ticket: the finished call.
            demand: calls holding or waiting for a slot, the finished one included (default: this
                limiter's own count; simulations pass theirs).
        """
        before = self.limit
        if ticket.outcome == "overloaded":
            self._on_overload(ticket.started_at)
        elif ticket.outcome == "ok" and ticket.ttft_s is not None:
            self._on_sample(max(ticket.ttft_s, 1e-6), self._slots.demand if demand is None else demand)
        if self.limit != before:
            self.stats.history.append((self._clock(), self.limit))
            self._slots.wake()

    def _on_overload(self, started_at: float) -> None:
        self.stats.overloads += 1
        self._slow_start = False
        if started_at < self._last_decrease:
            return  # sent before the last decrease: the same congestion event
        self._last_decrease = self._clock()
        self.stats.decreases += 1
        self._set(self._limit * self.backoff_ratio)

    def _on_sample(self, ttft: float, demand: int) -> None:
        st = self.stats
        st.samples += 1
        self._min_cur = min(self._min_cur, ttft)
        self._in_window += 1
        if self._in_window >= self.min_window:
            self._min_prev, self._min_cur, self._in_window = self._min_cur, math.inf, 0
        no_load = min(self._min_cur, self._min_prev)
        st.ttft_s = ttft if st.samples == 1 else (1 - self.smoothing) * st.ttft_s + self.smoothing * ttft
        st.no_load_ttft_s = no_load
        limit = self._limit
        queue = limit * (1.0 - no_load / max(st.ttft_s, no_load))
        st.queue = queue
        log_limit = math.log10(max(limit, 2.0))
        alpha, beta = 3.0 * log_limit, 6.0 * log_limit
        if queue > beta:
            self._slow_start = False
            self._set(limit - 1.0 / limit)
        elif queue < alpha:
            # Grow only while callers use the whole limit (RFC 7661's rule for an application-limited
            # sender), so a quiet period does not leave a limit far above what the server takes.
            if demand >= self.limit:
                self._set(limit + (1.0 if self._slow_start else 1.0 / limit))
        else:
            self._slow_start = False

    def _set(self, value: float) -> None:
        self._limit = min(max(value, float(self.min_limit)), float(self.max_limit))


def build_limiter(settings: LLMSettings) -> ConcurrencyLimiter:
    """The bound on calls in flight that ``settings`` ask for: adaptive within
    ``[min_in_flight, max_in_flight]`` starting at ``initial_in_flight``, or fixed at ``max_in_flight``."""
    if settings.adaptive:
        return AdaptiveLimiter(
            initial=settings.initial_in_flight, min_limit=settings.min_in_flight, max_limit=settings.max_in_flight
        )
    return FixedLimiter(settings.max_in_flight)
