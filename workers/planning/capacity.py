"""Capacity and cost of the two shapes of ragstream, from measured per-request costs (pure; no I/O).

Every number comes from two named relations, each written once below:

* **Little's law**, ``L = λ·W``: the mean number of requests inside a system equals the arrival rate times
  the mean time each spends there (:func:`in_flight`). Read backwards, a system that holds at most ``L``
  requests for ``W`` seconds each serves at most ``λ = L / W`` requests/s (:func:`slot_service_rate`).
* **The utilization law**, ``ρ = λ / (c·μ)``: ``c`` servers of service rate ``μ`` (requests/s each) fed ``λ``
  requests/s are busy a fraction ``ρ`` of the time. Keeping ``ρ ≤ ρ_max`` (queues explode as ``ρ → 1``)
  gives ``c ≥ λ / (ρ_max·μ)`` (:func:`servers_for_utilization`), rounded up to whole servers.

The shapes (DESIGN.md §2):

* **split**: retriever processes on CPU machines, generator processes on GPU machines (one LLM engine per
  GPU machine), Kafka in between; a request crosses 3 topics (requests, prompts, responses).
* **monolith**: one process per GPU machine doing retrieval, prompt building and generation with the engine
  on that machine's GPU; a request crosses 2 topics (requests, responses).

This module holds the relations and each shape at one rate (:func:`split_shape`, :func:`monolith_shape`,
:func:`partitions`); their inputs and results are the models of :mod:`workers.planning.models`, the break-even
scan is :mod:`workers.planning.breakeven` and the whole plan :func:`workers.planning.plan.plan_capacity`.

Units: rates in requests/s, times in seconds, CPU costs in CPU-seconds per request, engine cost in
GPU-busy seconds per request, prices in $ per machine-hour.

Example (:func:`workers.planning.plan.plan_capacity` puts the pieces together)::

    costs = MeasuredCosts(retrieval_cpu_s=0.012, generator_cpu_s=0.004, monolith_cpu_s=0.015, engine_s=0.05,
                          generation_latency_s=1.2, generation_latency_p99_s=2.0, retrieval_latency_s=0.05,
                          hop_latency_s=0.005, hop_latency_p99_s=0.02)
    result = plan_capacity(PlanInputs(rate=50, costs=costs, deployment=Deployment(cpu_price=0.4, gpu_price=2.5)))
    result.split.gpu_machines.value  # 6
"""

from __future__ import annotations

import math

from workers.planning.models import (
    Count,
    Deployment,
    Figure,
    Latency,
    MeasuredCosts,
    MonolithPlan,
    Partitions,
    ServiceRate,
    SplitPlan,
)

#: Kafka hops of one request in the split shape: requests → retriever, prompts → generator, responses → client.
SPLIT_HOPS = 3
#: Kafka hops of one request in the monolith: requests → monolith, responses → client.
MONOLITH_HOPS = 2
#: Seconds per hour, for $/hour ↔ $/request.
SECONDS_PER_HOUR = 3600.0
#: Ceilings ignore float noise below this relative size (0.7 × 20 is 13.999999999999998, not 14).
CEIL_TOLERANCE = 1e-9


# ----------------------------------------------------------------------------------------- the relations


def fmt(x: float) -> str:
    """Format a number for a formula: integers as integers, others with 4 significant digits.

    Args:
        x: Any finite number.

    Returns:
        ``"16"``, ``"13.33"``, ``"0.004"``, ``"12346"``.
    """
    if x == int(x) and abs(x) < 1e12:
        return str(int(x))
    if abs(x) >= 1e4:
        return f"{x:.0f}"
    return f"{x:.4g}"


def ceil_count(x: float) -> int:
    """Round a needed amount up to whole servers, ignoring float noise (``ceil(2.0000000000000004)`` is 2).

    Args:
        x: Servers needed, unrounded (≥ 0).

    Returns:
        The smallest integer ≥ x, up to a relative tolerance of 1e-9.
    """
    return math.ceil(x - CEIL_TOLERANCE * max(1.0, abs(x)))


def in_flight(rate: float, time_s: float) -> float:
    """Little's law, L = λ·W: requests inside a system.

    Args:
        rate: Arrival rate λ (requests/s).
        time_s: Mean time W a request spends inside (seconds).

    Returns:
        L, the mean number of requests inside.
    """
    return rate * time_s


def slot_service_rate(slots: float, holding_time_s: float) -> float:
    """Little's law read backwards, λ_max = L_max / W: the most a system of ``slots`` places can serve.

    Args:
        slots: Requests the system holds at once, L_max.
        holding_time_s: Seconds each request holds its place, W.

    Returns:
        λ_max (requests/s).
    """
    return slots / holding_time_s


def servers_for_utilization(rate: float, service_rate: float, max_utilization: float) -> float:
    """The utilization law ρ = λ / (c·μ) solved for c at ρ = ρ_max: c = λ / (ρ_max·μ), unrounded.

    Args:
        rate: Arrival rate λ (requests/s).
        service_rate: μ, requests/s one server completes when busy all the time.
        max_utilization: ρ_max (0 < ρ_max ≤ 1).

    Returns:
        Servers needed (fractional); round up with :func:`ceil_count`.
    """
    return rate / (max_utilization * service_rate)


def cost_per_million(cost_per_hour: float, rate: float) -> float:
    """$ per million requests: cost_per_hour / (λ·3600) · 10⁶.

    Args:
        cost_per_hour: $/hour of the whole shape.
        rate: λ (requests/s).

    Returns:
        $ per 10⁶ requests.
    """
    return cost_per_hour / (rate * SECONDS_PER_HOUR) * 1e6


def _cost_per_million_figure(cost_per_hour: float, rate: float) -> Figure:
    value = cost_per_million(cost_per_hour, rate)
    return Figure(
        value=value,
        unit="$/M req",
        formula=f"cost per million = cost/h / (λ × 3600) × 1e6 = {fmt(cost_per_hour)} / ({fmt(rate)} × 3600) × 1e6 "
        f"= {fmt(value)} $",
    )


def engine_capacity(costs: MeasuredCosts, deployment: Deployment) -> ServiceRate:
    """μ_gpu = min(1 / engine_s, engine_concurrency / generation_latency_s): one engine's service rate.

    The first term is GPU time (each request keeps the GPU busy ``engine_s`` seconds, batching included); the
    second is Little's law: at most ``engine_concurrency`` requests in the engine, each holding a slot for
    W = ``generation_latency_s``.

    Args:
        costs: Measured costs (``engine_s``, ``generation_latency_s``).
        deployment: ``engine_concurrency``.

    Returns:
        μ_gpu (requests/s) and which term binds (the GPU-time term on a tie).
    """
    gpu_time = 1.0 / costs.engine_s
    slots = slot_service_rate(deployment.engine_concurrency, costs.generation_latency_s)
    mu = min(gpu_time, slots)
    binding = "engine GPU time" if gpu_time <= slots else "engine slots"
    formula = (
        f"μ_gpu = min(1 / engine_s, engine_concurrency / generation_latency_s) = min(1 / {fmt(costs.engine_s)}, "
        f"{deployment.engine_concurrency} / {fmt(costs.generation_latency_s)}) = min({fmt(gpu_time)}, {fmt(slots)}) "
        f"= {fmt(mu)} req/s; binds: {binding}"
    )
    return ServiceRate(service_rate=Figure(value=mu, unit="req/s", formula=formula), binding=binding)


def generator_host_rate(costs: MeasuredCosts, deployment: Deployment) -> float:
    """Requests/s one GPU machine's host CPU serves for generator processes: gpu_host_cores / generator_cpu_s.

    Args:
        costs: ``generator_cpu_s`` (CPU-seconds per request).
        deployment: ``gpu_host_cores``.

    Returns:
        μ_host (requests/s).
    """
    return deployment.gpu_host_cores / costs.generator_cpu_s


def monolith_capacity(costs: MeasuredCosts, deployment: Deployment) -> ServiceRate:
    """μ_mono = min(μ_gpu, monolith_cores / monolith_cpu_s): one monolith replica's service rate.

    The replica is limited by its machine's engine (:func:`engine_capacity`) or by its own process's CPU, of
    which it keeps ``monolith_cores`` busy (Python work is GIL-bound).

    Args:
        costs: ``monolith_cpu_s`` and the engine's costs.
        deployment: ``monolith_cores``, ``engine_concurrency``.

    Returns:
        μ_mono (requests/s) and what binds (the GPU on a tie).
    """
    engine = engine_capacity(costs, deployment)
    mu_gpu = engine.service_rate.value
    cpu_rate = deployment.monolith_cores / costs.monolith_cpu_s
    mu = min(mu_gpu, cpu_rate)
    binding = f"GPU ({engine.binding})" if mu_gpu <= cpu_rate else "monolith process CPU"
    formula = (
        f"μ_mono = min(μ_gpu, monolith_cores / monolith_cpu_s) = min({fmt(mu_gpu)}, "
        f"{fmt(deployment.monolith_cores)} / {fmt(costs.monolith_cpu_s)}) = min({fmt(mu_gpu)}, {fmt(cpu_rate)}) = "
        f"{fmt(mu)} req/s; binds: {binding}"
    )
    return ServiceRate(service_rate=Figure(value=mu, unit="req/s", formula=formula), binding=binding)


def latency_estimate(costs: MeasuredCosts, hops: int, budget_s: float | None = None, name: str = "") -> Latency:
    """End-to-end latency of a shape: retrieval + generation + hops × Kafka hop, for the p50 and the p99.

    Hops counted are every topic a request crosses between the client's produce and its consume: split 3
    (requests, prompts, responses; :data:`SPLIT_HOPS`), monolith 2 (requests, responses; :data:`MONOLITH_HOPS`).
    The p99 adds the stages' p99s, which is exact only when a request slow in one stage is slow in all
    (otherwise it overstates); retrieval enters with its p50, as no retrieval p99 is measured. Both are
    estimates at ρ ≤ ρ_max: the measured latencies include the queueing of the benchmark, no more.

    Args:
        costs: Measured latencies (seconds).
        hops: Kafka hops counted.
        budget_s: End-to-end p99 budget (seconds), or None.
        name: Label put before the formulas (``split``, ``monolith``).

    Returns:
        The estimate (seconds), flagged ``over_budget`` when the p99 exceeds the budget.
    """
    label = f"{name} " if name else ""
    p50 = costs.retrieval_latency_s + costs.generation_latency_s + hops * costs.hop_latency_s
    p99 = costs.retrieval_latency_s + costs.generation_latency_p99_s + hops * costs.hop_latency_p99_s
    return Latency(
        hops=hops,
        p50=Figure(
            value=p50,
            unit="s",
            formula=f"{label}p50 = retrieval_latency_s + generation_latency_s + {hops} × hop_latency_s = "
            f"{fmt(costs.retrieval_latency_s)} + {fmt(costs.generation_latency_s)} + {hops} × "
            f"{fmt(costs.hop_latency_s)} = {fmt(p50)} s",
        ),
        p99=Figure(
            value=p99,
            unit="s",
            formula=f"{label}p99 ≈ retrieval_latency_s + generation_latency_p99_s + {hops} × hop_latency_p99_s = "
            f"{fmt(costs.retrieval_latency_s)} + {fmt(costs.generation_latency_p99_s)} + {hops} × "
            f"{fmt(costs.hop_latency_p99_s)} = {fmt(p99)} s",
        ),
        budget_s=budget_s,
        over_budget=None if budget_s is None else p99 > budget_s,
    )


def split_shape(rate: float, costs: MeasuredCosts, deployment: Deployment, budget_s: float | None = None) -> SplitPlan:
    """Replicas, machines and cost of the split shape at rate λ.

    GPU machines: ``g = max(ceil(λ / (ρ_max·μ_gpu)), ceil(λ·generator_cpu_s / (ρ_max·gpu_host_cores)), 1)``
    (utilization law for the engine and for the GPU machine's host CPU). The generator's Python work is
    GIL-bound, so each GPU machine runs one generator process per host core its share needs,
    ``max(1, ceil((λ/g)·generator_cpu_s / ρ_max))`` (1 unless the host CPU binds). Retrievers: cores needed
    ``λ·retrieval_cpu_s / ρ_max``, one process per core, ``max(1, ceil(cores / cpu_cores))`` CPU machines.
    Cost: ``g·gpu_price + cpu_machines·cpu_price`` $/hour.

    Args:
        rate: λ (requests/s).
        costs: Measured per-request costs.
        deployment: Machines, prices, ρ_max.
        budget_s: End-to-end p99 budget (seconds), or None.

    Returns:
        The split plan at λ.
    """
    rho = deployment.max_utilization
    engine = engine_capacity(costs, deployment)
    mu_gpu = engine.service_rate.value
    host_rate = generator_host_rate(costs, deployment)
    by_engine = servers_for_utilization(rate, mu_gpu, rho)
    by_host = servers_for_utilization(rate, host_rate, rho)
    g = max(ceil_count(by_engine), ceil_count(by_host), 1)
    binding = f"GPU ({engine.binding})" if by_engine >= by_host else "GPU-host CPU (generator processes)"
    gpu_machines = Count(
        value=g,
        formula=f"GPU machines g = max(ceil(λ / (ρ_max × μ_gpu)), ceil(λ × generator_cpu_s / (ρ_max × "
        f"gpu_host_cores)), 1) = max(ceil({fmt(rate)} / ({fmt(rho)} × {fmt(mu_gpu)})), ceil({fmt(rate)} × "
        f"{fmt(costs.generator_cpu_s)} / ({fmt(rho)} × {deployment.gpu_host_cores})), 1) = max(ceil({fmt(by_engine)}), "
        f"ceil({fmt(by_host)}), 1) = {g}",
    )

    per_machine_cores = servers_for_utilization(rate / g, 1.0 / costs.generator_cpu_s, rho)
    per_machine = max(1, ceil_count(per_machine_cores))
    processes = Count(
        value=per_machine,
        formula=f"generator processes per GPU machine = max(1, ceil((λ / g) × generator_cpu_s / ρ_max)) = "
        f"max(1, ceil(({fmt(rate)} / {g}) × {fmt(costs.generator_cpu_s)} / {fmt(rho)})) = "
        f"max(1, ceil({fmt(per_machine_cores)})) = {per_machine}",
    )
    generators = Count(
        value=g * per_machine,
        formula=f"generator replicas = g × processes per GPU machine = {g} × {per_machine} = {g * per_machine}",
    )
    utilization = rate / (g * mu_gpu)
    gpu_util = Figure(
        value=utilization,
        unit="",
        formula=f"engine ρ = λ / (g × μ_gpu) = {fmt(rate)} / ({g} × {fmt(mu_gpu)}) = {fmt(utilization)}",
    )

    cores = servers_for_utilization(rate, 1.0 / costs.retrieval_cpu_s, rho)
    retriever_cores = Figure(
        value=cores,
        unit="cores",
        formula=f"retriever cores = λ × retrieval_cpu_s / ρ_max = {fmt(rate)} × {fmt(costs.retrieval_cpu_s)} / "
        f"{fmt(rho)} = {fmt(cores)}",
    )
    n_retrievers = max(1, ceil_count(cores))
    retrievers = Count(
        value=n_retrievers,
        formula=f"retriever replicas = max(1, ceil(retriever cores)) = max(1, ceil({fmt(cores)})) = {n_retrievers}",
    )
    n_cpu = max(1, ceil_count(cores / deployment.cpu_cores))
    cpu_machines = Count(
        value=n_cpu,
        formula=f"CPU machines = max(1, ceil(retriever cores / cpu_cores)) = max(1, ceil({fmt(cores)} / "
        f"{deployment.cpu_cores})) = {n_cpu}",
    )

    per_engine = in_flight(rate / g, costs.generation_latency_s)
    in_flight_fig = Figure(
        value=per_engine,
        unit="requests",
        formula=f"in flight per engine L = (λ / g) × generation_latency_s = ({fmt(rate)} / {g}) × "
        f"{fmt(costs.generation_latency_s)} = {fmt(per_engine)} (slots {deployment.engine_concurrency})",
    )

    cost = g * deployment.gpu_price + n_cpu * deployment.cpu_price
    cost_fig = Figure(
        value=cost,
        unit="$/h",
        formula=f"split cost/h = g × gpu_price + CPU machines × cpu_price = {g} × {fmt(deployment.gpu_price)} + "
        f"{n_cpu} × {fmt(deployment.cpu_price)} = {fmt(cost)} $/h",
    )
    return SplitPlan(
        rate=rate,
        gpu_machines=gpu_machines,
        binding=binding,
        generator_processes_per_gpu_machine=processes,
        generator_replicas=generators,
        gpu_utilization=gpu_util,
        retriever_cores=retriever_cores,
        retriever_replicas=retrievers,
        cpu_machines=cpu_machines,
        in_flight_per_engine=in_flight_fig,
        over_engine_concurrency=per_engine > deployment.engine_concurrency,
        cost_per_hour=cost_fig,
        cost_per_million=_cost_per_million_figure(cost, rate),
        latency=latency_estimate(costs, SPLIT_HOPS, budget_s, "split"),
    )


def monolith_shape(
    rate: float, costs: MeasuredCosts, deployment: Deployment, budget_s: float | None = None
) -> MonolithPlan:
    """Replicas and cost of the monolith at rate λ: one replica per GPU machine.

    ``μ_mono`` from :func:`monolith_capacity`; replicas ``m = max(1, ceil(λ / (ρ_max·μ_mono)))`` (utilization
    law); cost ``m·gpu_price`` $/hour.

    Args:
        rate: λ (requests/s).
        costs: Measured per-request costs.
        deployment: Machines, prices, ρ_max.
        budget_s: End-to-end p99 budget (seconds), or None.

    Returns:
        The monolith plan at λ, with the binding resource (the GPU on a tie).
    """
    rho = deployment.max_utilization
    service = monolith_capacity(costs, deployment)
    mu = service.service_rate.value
    needed = servers_for_utilization(rate, mu, rho)
    m = max(1, ceil_count(needed))
    replicas = Count(
        value=m,
        formula=f"monolith replicas m = max(1, ceil(λ / (ρ_max × μ_mono))) = max(1, ceil({fmt(rate)} / "
        f"({fmt(rho)} × {fmt(mu)}))) = max(1, ceil({fmt(needed)})) = {m}",
    )
    utilization = rate / (m * mu)
    util = Figure(
        value=utilization,
        unit="",
        formula=f"monolith ρ = λ / (m × μ_mono) = {fmt(rate)} / ({m} × {fmt(mu)}) = {fmt(utilization)}",
    )
    per_engine = in_flight(rate / m, costs.generation_latency_s)
    in_flight_fig = Figure(
        value=per_engine,
        unit="requests",
        formula=f"in flight per engine L = (λ / m) × generation_latency_s = ({fmt(rate)} / {m}) × "
        f"{fmt(costs.generation_latency_s)} = {fmt(per_engine)} (slots {deployment.engine_concurrency})",
    )
    cost = m * deployment.gpu_price
    cost_fig = Figure(
        value=cost,
        unit="$/h",
        formula=f"monolith cost/h = m × gpu_price = {m} × {fmt(deployment.gpu_price)} = {fmt(cost)} $/h",
    )
    return MonolithPlan(
        rate=rate,
        service_rate=service.service_rate,
        binding=service.binding,
        replicas=replicas,
        utilization=util,
        in_flight_per_engine=in_flight_fig,
        over_engine_concurrency=per_engine > deployment.engine_concurrency,
        cost_per_hour=cost_fig,
        cost_per_million=_cost_per_million_figure(cost, rate),
        latency=latency_estimate(costs, MONOLITH_HOPS, budget_s, "monolith"),
    )


def partitions(split: SplitPlan, monolith: MonolithPlan, headroom: float) -> Partitions:
    """Partitions per topic, so that either shape's consumer groups fit with room to grow.

    A consumer group uses at most one consumer per partition, so a topic needs at least as many partitions as
    the largest group reading it; ``headroom`` (≥ 1) lets replicas be added without repartitioning (which
    would move keys between partitions). Requests: ``ceil(headroom·max(retriever replicas, monolith
    replicas))``; prompts: ``ceil(headroom·generator replicas)``; responses: as many as requests.

    Args:
        split: The split plan (retriever and generator replicas).
        monolith: The monolith plan (its replicas read the requests topic).
        headroom: Partitions per consumer.

    Returns:
        Partitions of the requests, prompts and responses topics.
    """
    readers = max(split.retriever_replicas.value, monolith.replicas.value)
    n_requests = ceil_count(headroom * readers)
    n_prompts = ceil_count(headroom * split.generator_replicas.value)
    requests = Count(
        value=n_requests,
        formula=f"requests partitions = ceil(headroom × max(retriever replicas, monolith replicas)) = "
        f"ceil({fmt(headroom)} × max({split.retriever_replicas.value}, {monolith.replicas.value})) = {n_requests}",
    )
    prompts = Count(
        value=n_prompts,
        formula=f"prompts partitions = ceil(headroom × generator replicas) = ceil({fmt(headroom)} × "
        f"{split.generator_replicas.value}) = {n_prompts}",
    )
    responses = Count(value=n_requests, formula=f"responses partitions = requests partitions = {n_requests}")
    return Partitions(requests=requests, prompts=prompts, responses=responses)
