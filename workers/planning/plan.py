"""The whole plan of ``ragstream plan``: both shapes at the target rate, partitions, break-even and caveats.

:func:`plan_capacity` puts together the relations of :mod:`workers.planning.capacity` and the break-even
scan of :mod:`workers.planning.breakeven` into one :class:`workers.planning.models.PlanResult` (pure; no I/O).
"""

from __future__ import annotations

from typing import Literal

from workers.planning.breakeven import break_even, costs_less
from workers.planning.capacity import (
    MONOLITH_HOPS,
    SPLIT_HOPS,
    engine_capacity,
    fmt,
    monolith_shape,
    partitions,
    split_shape,
)
from workers.planning.models import PlanInputs, PlanResult


def plan_capacity(inputs: PlanInputs) -> PlanResult:
    """Compute both shapes at the target rate, the partitions and the break-even scan.

    Args:
        inputs: Rate, measured costs, deployment, budget, scan top.

    Returns:
        The whole plan.
    """
    costs, deployment = inputs.costs, inputs.deployment
    split = split_shape(inputs.rate, costs, deployment, inputs.p99_budget_s)
    mono = monolith_shape(inputs.rate, costs, deployment, inputs.p99_budget_s)
    s, m = split.cost_per_hour.value, mono.cost_per_hour.value
    cheaper: Literal["split", "monolith", "tie"] = (
        "split" if costs_less(s, m) else "monolith" if costs_less(m, s) else "tie"
    )
    rho = fmt(deployment.max_utilization)
    notes = [
        f"latency: sums of per-stage latencies; split counts {SPLIT_HOPS} Kafka hops (requests, prompts, responses), "
        f"the monolith {MONOLITH_HOPS} (requests, responses)",
        f"the p99 is an estimate at ρ ≤ {rho}: it adds the stages' p99s (exact only when slow stages coincide) "
        "and uses the retrieval p50 (no retrieval p99 is measured); queueing beyond the benchmark's is not modelled",
        "generator processes are GIL-bound: one per host core a GPU machine's share needs (1 unless the host CPU "
        "binds)",
        "partitions serve either shape, so switching shapes needs no repartitioning",
    ]
    if split.over_engine_concurrency or mono.over_engine_concurrency:
        notes.append("requests in flight per engine exceed engine_concurrency: the engine would queue them")
    return PlanResult(
        inputs=inputs,
        engine=engine_capacity(costs, deployment),
        split=split,
        monolith=mono,
        partitions=partitions(split, mono, deployment.partition_headroom),
        cheaper_at_rate=cheaper,
        break_even=break_even(costs, deployment, max_rate=inputs.max_rate),
        notes=notes,
    )
