"""The worker loop's Prometheus metrics (one bundle per process; the ``role`` label tells loops apart)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True)
class LoopMetrics:
    """Prometheus metrics of one worker loop (built by :func:`build_loop_metrics`)."""

    consumed: Counter
    produced: Counter
    dead_letters: Counter
    handler_errors: Counter
    in_flight: Gauge
    paused: Gauge
    batch_size: Histogram
    handle_seconds: Histogram
    rebalances: Counter


def build_loop_metrics(
    registry: CollectorRegistry | None = None, prefix: str = "ragstream_worker", role: str = "worker"
) -> LoopMetrics:
    """Build the loop's metric bundle in ``registry`` (a fresh private one by default).

    Latency buckets span 1 ms to 60 s (embedding batches to LLM calls), in seconds.
    """
    reg = registry if registry is not None else CollectorRegistry()
    lat = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
    labels = ["role"]
    return LoopMetrics(
        consumed=Counter(f"{prefix}_messages_consumed", "Messages consumed", labels, registry=reg),
        produced=Counter(f"{prefix}_messages_produced", "Messages delivered", labels + ["topic"], registry=reg),
        dead_letters=Counter(f"{prefix}_dead_letters", "Dead letters produced", labels, registry=reg),
        handler_errors=Counter(
            f"{prefix}_handler_errors", "Handler failures by error class", labels + ["error_class"], registry=reg
        ),
        in_flight=Gauge(f"{prefix}_in_flight", "Messages handed to the handler, unfinished", labels, registry=reg),
        paused=Gauge(f"{prefix}_paused", "1 while partitions are paused for backpressure", labels, registry=reg),
        batch_size=Histogram(
            f"{prefix}_batch_size",
            "Messages per handler call",
            labels,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=reg,
        ),
        handle_seconds=Histogram(
            f"{prefix}_handle_seconds", "Handler time per batch", labels, buckets=lat, registry=reg
        ),
        rebalances=Counter(f"{prefix}_rebalances", "Partition assignments and revocations", labels, registry=reg),
    )
