"""The gateway's Prometheus metrics (one bundle, in the registry the app passes in). No label carries an API key."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class GatewayMetrics:
    """Requests by endpoint and status, time to first token, streams, refusals.

    Args:
        registry: where the metrics go (a private one if omitted).
        prefix: metric name prefix.
    """

    def __init__(self, registry: CollectorRegistry | None = None, prefix: str = "ragstream_gateway") -> None:
        reg = registry if registry is not None else CollectorRegistry()
        self.registry = reg
        buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
        self.requests = Counter(
            f"{prefix}_requests", "HTTP requests by endpoint and status code", ["endpoint", "code"], registry=reg
        )
        self.ttft = Histogram(
            f"{prefix}_ttft_seconds", "Time from a request to its first streamed text", buckets=buckets, registry=reg
        )
        self.latency = Histogram(
            f"{prefix}_answer_seconds", "Time from a request to its whole answer", buckets=buckets, registry=reg
        )
        self.in_flight = Gauge(f"{prefix}_in_flight", "Requests waiting for their answer", registry=reg)
        self.tokens = Counter(f"{prefix}_streamed_chunks", "Content chunks sent to streaming clients", registry=reg)
        self.resumed = Counter(
            f"{prefix}_streams_resumed", "Streams continued from a new generation attempt (a generator crashed)",
            registry=reg,
        )  # fmt: skip
        self.contradictions = Counter(
            f"{prefix}_streams_contradicted", "Streams ended with an error: a new attempt's text differed",
            registry=reg,
        )  # fmt: skip
        self.cancels = Counter(f"{prefix}_cancels", "Requests cancelled because the client went away", registry=reg)
        self.refused = Counter(
            f"{prefix}_refused", "Requests refused before Kafka, by reason", ["reason"], registry=reg
        )
