"""From which request rate the split shape costs less per hour than the monolith (pure; no I/O).

Both shapes' costs per hour (:mod:`workers.planning.capacity`) are step functions of the rate λ, because
machines come whole; :func:`break_even` therefore scans a grid of rates (:func:`scan_rates`) instead of solving
for a crossing, and :func:`cost_slopes` gives each shape's $/hour per req/s in the continuous model, whose
lower slope wins asymptotically. :func:`costs_less` compares two costs beyond float noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from workers.planning.capacity import (
    CEIL_TOLERANCE,
    engine_capacity,
    fmt,
    generator_host_rate,
    monolith_capacity,
    monolith_shape,
    servers_for_utilization,
    split_shape,
)
from workers.planning.models import DEFAULT_MAX_RATE, DEFAULT_MIN_RATE, BreakEven, Deployment, Figure, MeasuredCosts


def scan_rates(
    max_rate: float, points: int = 200, min_rate: float = DEFAULT_MIN_RATE, integers_up_to: int = 100
) -> list[float]:
    """The break-even grid: ``points`` log-spaced rates from ``min_rate`` to ``max_rate`` plus every integer.

    Log-spaced points are rounded to 4 significant digits (so printed rates are the scanned ones); the
    integers 1 … min(integers_up_to, max_rate) are added because the ceilings step at whole numbers of
    machines, which at low rates fall near whole request rates.

    Args:
        max_rate: Top of the scan (requests/s), included.
        points: Log-spaced points (≥ 2).
        min_rate: Bottom of the scan (requests/s).
        integers_up_to: Add every integer rate up to this one.

    Returns:
        Sorted distinct rates (requests/s).
    """
    if max_rate <= min_rate:
        return [max_rate]
    ratio = (max_rate / min_rate) ** (1.0 / (points - 1))
    grid = {float(f"{min_rate * ratio**i:.4g}") for i in range(points - 1)}
    grid.add(max_rate)
    grid.update(float(n) for n in range(1, min(integers_up_to, math.floor(max_rate)) + 1))
    return sorted(r for r in grid if min_rate <= r <= max_rate)


def costs_less(a: float, b: float) -> bool:
    """Whether cost ``a`` is below cost ``b`` by more than float noise."""
    return a < b - CEIL_TOLERANCE * max(1.0, abs(b))


def cost_slopes(costs: MeasuredCosts, deployment: Deployment) -> tuple[Figure, Figure]:
    """$/hour per req/s of each shape without ceilings (the continuous model), split first.

    Split: ``gpu_price·max(1/(ρ_max·μ_gpu), generator_cpu_s/(ρ_max·gpu_host_cores)) +
    cpu_price·retrieval_cpu_s/(ρ_max·cpu_cores)``; monolith: ``gpu_price/(ρ_max·μ_mono)``. Both lines go
    through the origin, so the lower slope wins at every rate in the continuous model, and asymptotically
    in the real one (each ceiling adds less than one machine).

    Args:
        costs: Measured per-request costs.
        deployment: Machines, prices, ρ_max.

    Returns:
        (split slope, monolith slope), in $/h per req/s.
    """
    rho = deployment.max_utilization
    mu_gpu = engine_capacity(costs, deployment).service_rate.value
    # The counts of split_shape and monolith_shape at λ = 1 req/s, without ceilings.
    gpu_per_rate = max(
        servers_for_utilization(1.0, mu_gpu, rho),
        servers_for_utilization(1.0, generator_host_rate(costs, deployment), rho),
    )
    cpu_per_rate = servers_for_utilization(1.0, 1.0 / costs.retrieval_cpu_s, rho) / deployment.cpu_cores
    split_slope = deployment.gpu_price * gpu_per_rate + deployment.cpu_price * cpu_per_rate
    mu_mono = monolith_capacity(costs, deployment).service_rate.value
    mono_per_rate = servers_for_utilization(1.0, mu_mono, rho)
    mono_slope = deployment.gpu_price * mono_per_rate
    return (
        Figure(
            value=split_slope,
            unit="$/h per req/s",
            formula=f"split slope = gpu_price × max(1 / (ρ_max × μ_gpu), generator_cpu_s / (ρ_max × gpu_host_cores)) "
            f"+ cpu_price × retrieval_cpu_s / (ρ_max × cpu_cores) = {fmt(deployment.gpu_price)} × {fmt(gpu_per_rate)} "
            f"+ {fmt(deployment.cpu_price)} × {fmt(cpu_per_rate)} = {fmt(split_slope)} $/h per req/s",
        ),
        Figure(
            value=mono_slope,
            unit="$/h per req/s",
            formula=f"monolith slope = gpu_price / (ρ_max × μ_mono) = {fmt(deployment.gpu_price)} / ({fmt(rho)} × "
            f"{fmt(mu_mono)}) = {fmt(mono_slope)} $/h per req/s",
        ),
    )


def break_even(
    costs: MeasuredCosts,
    deployment: Deployment,
    rates: Sequence[float] | None = None,
    max_rate: float = DEFAULT_MAX_RATE,
) -> BreakEven:
    """The lowest rate from which the split shape is cheaper per hour at every scanned rate above it.

    Found by scanning, not solved: the ceilings make both costs step functions of λ, which can cross several
    times (split can win in a pocket where the monolith just added a machine, then lose again), so a closed
    form of the crossing is wrong. The continuous slopes (:func:`cost_slopes`) give the asymptotic winner;
    and since the split's ceilings add less than ``gpu_price + cpu_price`` and the monolith's cost is at least
    its slope times λ, split is certainly cheaper above ``(gpu_price + cpu_price) / (monolith slope − split
    slope)`` when that denominator is positive.

    Args:
        costs: Measured per-request costs.
        deployment: Machines, prices, ρ_max.
        rates: Rates to scan (requests/s, ascending); default :func:`scan_rates` up to ``max_rate``.
        max_rate: Top of the default scan (requests/s).

    Returns:
        The break-even rate or why there is none, and the slopes.

    Raises:
        ValueError: ``rates`` is empty.
    """
    grid = sorted(rates) if rates is not None else scan_rates(max_rate)
    if not grid:
        raise ValueError("break_even needs at least one rate to scan")
    cheaper = [
        costs_less(
            split_shape(r, costs, deployment).cost_per_hour.value,
            monolith_shape(r, costs, deployment).cost_per_hour.value,
        )
        for r in grid
    ]
    lo, hi = grid[0], grid[-1]
    last_not = max((r for r, c in zip(grid, cheaper, strict=True) if not c), default=None)
    n_cheaper = sum(cheaper)
    status: Literal["from_rate", "always", "never", "not_at_top"]
    rate: float | None = None
    if n_cheaper == 0:
        status, summary = "never", f"split never cheaper up to {fmt(hi)} req/s"
    elif last_not is None:
        status, rate = "always", lo
        summary = f"split cheaper at every rate scanned ({fmt(lo)} to {fmt(hi)} req/s)"
    elif cheaper[-1]:
        status = "from_rate"
        rate = grid[grid.index(last_not) + 1]
        summary = (
            f"split cheaper per hour from {fmt(rate)} req/s (at every scanned rate from there to {fmt(hi)} req/s; "
            f"not at {fmt(last_not)} req/s)"
        )
    else:
        status = "not_at_top"
        first = grid[cheaper.index(True)]
        summary = (
            f"split not cheaper at {fmt(hi)} req/s; cheaper only at {n_cheaper} of {len(grid)} scanned rates "
            f"(first {fmt(first)} req/s), where the monolith's ceilings round up"
        )

    split_slope, mono_slope = cost_slopes(costs, deployment)
    s, m = split_slope.value, mono_slope.value
    winner: Literal["split", "monolith", "tie"] = (
        "split" if costs_less(s, m) else "monolith" if costs_less(m, s) else "tie"
    )
    guaranteed: Figure | None = None
    if winner == "split":
        bound = (deployment.gpu_price + deployment.cpu_price) / (m - s)
        guaranteed = Figure(
            value=bound,
            unit="req/s",
            formula=f"split certainly cheaper above (gpu_price + cpu_price) / (monolith slope − split slope) = "
            f"({fmt(deployment.gpu_price)} + {fmt(deployment.cpu_price)}) / ({fmt(m)} − {fmt(s)}) = {fmt(bound)} req/s",
        )
    return BreakEven(
        status=status,
        rate=rate,
        last_not_cheaper_rate=last_not,
        cheaper_points=n_cheaper,
        scanned_points=len(grid),
        min_rate=lo,
        max_rate=hi,
        split_slope=split_slope,
        monolith_slope=mono_slope,
        asymptotic_winner=winner,
        guaranteed_from=guaranteed,
        summary=summary,
    )
