"""The retriever stage's Prometheus metrics (built in the registry the wiring passes in)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class RetrieverMetrics:
    """Retriever-specific metrics: stage latency, truncated queries, dropped passages, prompts built.

    Args:
        registry: the worker's registry (a private one in tests).
        prefix: metric name prefix.
    """

    def __init__(self, registry: CollectorRegistry | None = None, prefix: str = "ragstream_retriever") -> None:
        reg = registry if registry is not None else CollectorRegistry()
        buckets = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
        self.stage_seconds = Histogram(
            f"{prefix}_stage_seconds", "Time per stage per batch", ["stage"], buckets=buckets, registry=reg
        )
        self.truncated = Counter(
            f"{prefix}_queries_truncated", "Queries longer than the embedding model reads", registry=reg
        )
        self.dropped = Counter(
            f"{prefix}_passages_dropped", "Passages left out to fit the LLM token limit", registry=reg
        )
        self.prompts = Counter(f"{prefix}_prompts", "Prompts built", registry=reg)
