"""The monitor's Prometheus metrics, built as one bundle by :func:`build_metrics` (STYLE.md §8).

Counters are incremented from what a batch write actually *changed* (:class:`~workers.adapters.traces.
BatchResult`), never from what was consumed, so a redelivered event is not counted twice. (Counters still
start from zero in a new process, as Prometheus counters do.)

Metric names with the default prefix ``ragstream_monitor``:

* ``_requests_total``, ``_prompts_total``: request ids first seen with a request / a prompt.
* ``_answers_total{status}``: responses recorded, by status (``ok``, ``error``, ``expired``, ...).
* ``_errors_total{error_class,stage}``: requests whose effective error changed to this one.
* ``_dead_letters_total{stage,error_class}``: dead letters recorded.
* ``_bad_messages_total{topic_kind,error_class}``: messages the monitor could not decode.
* ``_stage_latency_seconds{stage}``: per-stage latency (embed, search, prompt, queue, llm_ttft, llm_total,
  end_to_end), buckets 1 ms to 60 s.
* ``_requests_in_flight``, ``_requests_past_deadline``: requests without an answer, and those of them past
  their deadline (refreshed by a timer from the trace table).
* ``_batch_write_seconds``, ``_batch_size``, ``_write_failures_total``: the sink itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from workers.monitor.trace import STAGES, BatchResult, ErrorRecord

#: Latency buckets (seconds): 1 ms to 60 s, roughly 1-2.5-5 per decade.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
)

#: Batch write time buckets (seconds): 1 ms to 10 s.
WRITE_BUCKETS_S: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

#: Batch size buckets (events).
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


@dataclass(frozen=True)
class MonitorMetrics:
    """All metrics of one monitor process (see the module docstring for names and labels)."""

    registry: CollectorRegistry
    requests: Counter
    prompts: Counter
    answers: Counter
    errors: Counter
    dead_letters: Counter
    bad_messages: Counter
    stage_latency: Histogram
    in_flight: Gauge
    past_deadline: Gauge
    batch_write: Histogram
    batch_size: Histogram
    write_failures: Counter

    def record(self, result: BatchResult, topic_kinds: dict[str, str] | None = None) -> None:
        """Count what one committed batch changed.

        Args:
            result: the batch's changes; redelivered events are not in it, so they are not counted.
            topic_kinds: topic name → logical kind, for the ``topic_kind`` label of bad messages.
        """
        for change in result.changes:
            if "request" in change.new_kinds:
                self.requests.inc()
            if "prompt" in change.new_kinds:
                self.prompts.inc()
            if change.status is not None:
                self.answers.labels(status=change.status).inc()
            if change.error is not None:
                error_class, stage = change.error
                self.errors.labels(error_class=error_class, stage=stage or "unknown").inc()
            for stage, seconds in change.latencies_s.items():
                self.stage_latency.labels(stage=stage).observe(seconds)
        self.record_errors(result.errors_inserted, topic_kinds)

    def record_errors(self, records: Iterable[ErrorRecord], topic_kinds: dict[str, str] | None = None) -> None:
        """Count newly stored error records.

        Args:
            records: error records that were new in the errors table.
            topic_kinds: topic name → logical kind (``requests``, ...) for the ``topic_kind`` label of bad
                messages; unknown topics are labelled with their name.
        """
        for rec in records:
            if rec.kind == "dead_letter":
                self.dead_letters.labels(stage=rec.stage, error_class=rec.error_class).inc()
            else:
                kind = (topic_kinds or {}).get(rec.source_topic, rec.source_topic)
                self.bad_messages.labels(topic_kind=kind, error_class=rec.error_class).inc()


def build_metrics(registry: CollectorRegistry | None = None, prefix: str = "ragstream_monitor") -> MonitorMetrics:
    """Create the monitor's metrics in ``registry``.

    Args:
        registry: where to register (default: the process-wide ``prometheus_client.REGISTRY``). Tests pass
            a fresh ``CollectorRegistry()`` so that several bundles can coexist.
        prefix: name prefix of every metric.

    Returns:
        The bundle.

    Raises:
        ValueError: a metric of the same name is already registered in ``registry``.
    """
    reg = REGISTRY if registry is None else registry
    p = prefix.rstrip("_")
    stage_latency = Histogram(
        f"{p}_stage_latency_seconds",
        "Per-stage latency of answered requests (seconds).",
        ["stage"],
        buckets=LATENCY_BUCKETS_S,
        registry=reg,
    )
    for stage in STAGES:  # export every stage from the start, with zero counts
        stage_latency.labels(stage=stage)
    return MonitorMetrics(
        registry=reg,
        requests=Counter(f"{p}_requests", "Request ids first seen with their request.", registry=reg),
        prompts=Counter(f"{p}_prompts", "Request ids first seen with their prompt.", registry=reg),
        answers=Counter(f"{p}_answers", "Responses recorded, by status.", ["status"], registry=reg),
        errors=Counter(
            f"{p}_errors",
            "Requests that ended in an error, by error class and stage.",
            ["error_class", "stage"],
            registry=reg,
        ),
        dead_letters=Counter(
            f"{p}_dead_letters",
            "Dead letters recorded, by stage and error class.",
            ["stage", "error_class"],
            registry=reg,
        ),
        bad_messages=Counter(
            f"{p}_bad_messages",
            "Messages the monitor could not decode (recorded in the errors table).",
            ["topic_kind", "error_class"],
            registry=reg,
        ),
        stage_latency=stage_latency,
        in_flight=Gauge(f"{p}_requests_in_flight", "Requests seen without a response yet.", registry=reg),
        past_deadline=Gauge(
            f"{p}_requests_past_deadline", "Requests without a response whose deadline has passed.", registry=reg
        ),
        batch_write=Histogram(
            f"{p}_batch_write_seconds",
            "Time to write one batch to PostgreSQL (seconds).",
            buckets=WRITE_BUCKETS_S,
            registry=reg,
        ),
        batch_size=Histogram(f"{p}_batch_size", "Events per written batch.", buckets=BATCH_BUCKETS, registry=reg),
        write_failures=Counter(f"{p}_write_failures", "Batch writes that failed and were retried.", registry=reg),
    )
