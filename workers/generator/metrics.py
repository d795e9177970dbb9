"""The generator stage's Prometheus metrics (built in the registry the wiring passes in)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class GeneratorMetrics:
    """Generator-specific metrics: LLM latency (TTFT, total), tokens, retried calls.

    Args:
        registry: the worker's registry (a private one in tests).
        prefix: metric name prefix.
    """

    def __init__(self, registry: CollectorRegistry | None = None, prefix: str = "ragstream_generator") -> None:
        reg = registry if registry is not None else CollectorRegistry()
        #: The registry these metrics are in (an in-process LLM engine adds its busy counters there).
        self.registry = reg
        llm_buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
        self.ttft = Histogram(f"{prefix}_llm_ttft_seconds", "Time to first token", buckets=llm_buckets, registry=reg)
        self.total = Histogram(
            f"{prefix}_llm_seconds", "LLM call wall time (successful attempt)", buckets=llm_buckets, registry=reg
        )
        self.tokens = Counter(f"{prefix}_completion_tokens", "Generated tokens", registry=reg)
        self.retries = Counter(f"{prefix}_llm_retries", "Retried LLM calls by error", ["error"], registry=reg)
        self.cancelled = Counter(f"{prefix}_cancelled", "Requests cancelled by their client", registry=reg)
        self.tokens_saved = Counter(
            f"{prefix}_cancelled_tokens_saved", "Token budget not generated because the client cancelled", registry=reg
        )
        self.seconds_saved = Counter(
            f"{prefix}_cancelled_llm_seconds_saved",
            "Estimated LLM seconds not spent because the client cancelled: the remaining token budget times the "
            "generation's time per token so far (an upper bound: the model may have ended sooner)",
            registry=reg,
        )
