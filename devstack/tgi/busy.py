"""How long an engine is busy: seconds with at least one generation in flight, reported by the engine side.

"LLM busy fraction" = busy seconds ÷ wall seconds over a window, i.e. ``rate(engine_busy_seconds_total[1m])``
in PromQL (0: idle, 1: always at least one generation running). It is the utilization ρ of the engine seen as
one server; with continuous batching, ρ near 1 says the engine never waits for work, not that its batch is
full. The HTTP server (``devstack.tgi.server``) and the in-process adapter (``workers.adapters.llm_engine``)
each hold one :class:`BusyClock` and expose it with :func:`register_busy_metrics`:

* ``engine_busy_seconds_total``: seconds with >= 1 generation in flight (counter);
* ``engine_generations_total``: generations started (counter).

Both are read at scrape time, so a long busy period shows while it lasts, not only once it ends.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

#: Metric names (the Prometheus text format adds ``_total`` to counters).
BUSY_SECONDS = "engine_busy_seconds"
GENERATIONS = "engine_generations"


class BusyClock:
    """Counts generations in flight and accumulates the seconds during which at least one runs.

    Thread-safe (one lock), so engines that decode in worker threads may call it from there.

    Args:
        clock: Monotonic clock in seconds (injectable for tests).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._in_flight = 0
        self._generations = 0
        self._busy_s = 0.0
        self._since: float | None = None  # clock() when in_flight went from 0 to 1

    def begin(self) -> None:
        """One more generation in flight (the clock starts running when it is the first)."""
        with self._lock:
            if self._in_flight == 0:
                self._since = self._clock()
            self._in_flight += 1
            self._generations += 1

    def end(self) -> None:
        """One generation fewer in flight (the clock stops when none is left).

        Raises:
            RuntimeError: more :meth:`end` than :meth:`begin` calls.
        """
        with self._lock:
            if self._in_flight == 0:
                raise RuntimeError("BusyClock.end() without begin()")
            self._in_flight -= 1
            if self._in_flight == 0 and self._since is not None:
                self._busy_s += self._clock() - self._since
                self._since = None

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Count the block as one generation in flight (:meth:`begin` on entry, :meth:`end` on exit)."""
        self.begin()
        try:
            yield
        finally:
            self.end()

    @property
    def in_flight(self) -> int:
        """Generations in flight now."""
        with self._lock:
            return self._in_flight

    @property
    def generations(self) -> int:
        """Generations started since this clock was made."""
        with self._lock:
            return self._generations

    def busy_seconds(self) -> float:
        """Seconds with at least one generation in flight, the current busy period included up to now."""
        with self._lock:
            open_s = self._clock() - self._since if self._since is not None else 0.0
            return self._busy_s + open_s


class _BusyCollector(Collector):
    """Reads a :class:`BusyClock` at scrape time."""

    def __init__(self, clock: BusyClock) -> None:
        self._busy = clock

    def collect(self) -> Iterable[Metric]:
        return self._families(self._busy.busy_seconds(), self._busy.generations)

    def describe(self) -> Iterable[Metric]:
        """The metric names, so the registry refuses a second collector with the same ones."""
        return self._families(0.0, 0)

    @staticmethod
    def _families(busy_s: float, generations: int) -> list[Metric]:
        return [
            CounterMetricFamily(BUSY_SECONDS, "Seconds with at least one generation in flight", value=busy_s),
            CounterMetricFamily(GENERATIONS, "Generations started", value=generations),
        ]


def register_busy_metrics(registry: CollectorRegistry, clock: BusyClock) -> None:
    """Expose ``clock`` in ``registry`` as ``engine_busy_seconds_total`` and ``engine_generations_total``.

    Args:
        registry: Where the two counters go (one clock per registry).
        clock: The engine's busy clock.

    Raises:
        ValueError: the registry already has these metric names.
    """
    registry.register(_BusyCollector(clock))
