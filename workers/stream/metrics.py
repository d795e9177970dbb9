"""The stream runner's metrics bundle (STYLE.md §8): one factory, an injectable registry, a name prefix."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter


@dataclass(frozen=True)
class RunnerMetrics:
    """What the runner decides, counted (built by :func:`build_runner_metrics`).

    Attributes:
        expired: inputs past their deadline, answered ``expired`` without work (label ``stage``: the stage
            that was not run).
        errors: failed inputs by ``stage`` and ``error_class`` (bad messages, stage failures, too-large outputs).
        responses: Responses emitted by ``status`` (answers, error answers, re-emitted stored answers).
        reemitted: inputs answered from the answer store or from a concurrent copy, without running a stage.
        store_errors: answer-store calls that failed after their retries (the runner went on without it).
    """

    expired: Counter
    errors: Counter
    responses: Counter
    reemitted: Counter
    store_errors: Counter


def build_runner_metrics(registry: CollectorRegistry | None = None, prefix: str = "ragstream_runner") -> RunnerMetrics:
    """Build the runner's metrics in ``registry`` (a fresh private one by default) with names ``<prefix>_*``."""
    reg = registry if registry is not None else CollectorRegistry()
    return RunnerMetrics(
        expired=Counter(f"{prefix}_expired", "Inputs past their deadline, not processed", ["stage"], registry=reg),
        errors=Counter(
            f"{prefix}_errors", "Failed inputs by stage and error class", ["stage", "error_class"], registry=reg
        ),
        responses=Counter(f"{prefix}_responses", "Responses emitted by status", ["status"], registry=reg),
        reemitted=Counter(f"{prefix}_answers_reemitted", "Inputs answered from the answer store", registry=reg),
        store_errors=Counter(f"{prefix}_answer_store_errors", "Answer store calls failed", registry=reg),
    )
