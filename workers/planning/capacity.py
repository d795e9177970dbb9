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

Units: rates in requests/s, times in seconds, CPU costs in CPU-seconds per request, engine cost in
GPU-busy seconds per request, prices in $ per machine-hour.

Example::

    costs = MeasuredCosts(retrieval_cpu_s=0.012, generator_cpu_s=0.004, monolith_cpu_s=0.015, engine_s=0.05,
                          generation_latency_s=1.2, generation_latency_p99_s=2.0, retrieval_latency_s=0.05,
                          hop_latency_s=0.005, hop_latency_p99_s=0.02)
    result = plan_capacity(PlanInputs(rate=50, costs=costs, deployment=Deployment(cpu_price=0.4, gpu_price=2.5)))
    result.split.gpu_machines.value  # 6
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

#: Kafka hops of one request in the split shape: requests → retriever, prompts → generator, responses → client.
SPLIT_HOPS = 3
#: Kafka hops of one request in the monolith: requests → monolith, responses → client.
MONOLITH_HOPS = 2
#: Seconds per hour, for $/hour ↔ $/request.
SECONDS_PER_HOUR = 3600.0

DEFAULT_CPU_CORES = 8
DEFAULT_GPU_HOST_CORES = 8
DEFAULT_MONOLITH_CORES = 1.0
DEFAULT_ENGINE_CONCURRENCY = 16
DEFAULT_MAX_UTILIZATION = 0.7
DEFAULT_PARTITION_HEADROOM = 2.0
DEFAULT_MAX_RATE = 1000.0
#: Lowest rate of the break-even scan (requests/s).
DEFAULT_MIN_RATE = 0.1

#: Ceilings ignore float noise below this relative size (0.7 × 20 is 13.999999999999998, not 14).
_CEIL_TOLERANCE = 1e-9

_FROZEN = ConfigDict(frozen=True, extra="forbid")

#: A finite number > 0.
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


# --------------------------------------------------------------------------------------------------- inputs


class MeasuredCosts(BaseModel):
    """Per-request costs measured by benchmark B9 (the ``--costs`` file), all > 0.

    Attributes:
        retrieval_cpu_s: CPU-seconds per request of the retriever process (embed, search, prompt, Kafka).
        generator_cpu_s: CPU-seconds per request of the generator process (Kafka + HTTP client), engine excluded.
        monolith_cpu_s: CPU-seconds per request of the monolith process, engine excluded.
        engine_s: Engine busy seconds per request at saturation (GPU time per request, batching included).
        generation_latency_s: Wall seconds one generation holds an engine slot, p50.
        generation_latency_p99_s: The same, p99 (≥ the p50).
        retrieval_latency_s: Wall seconds of retrieval + prompt building, p50.
        hop_latency_s: Latency added by one Kafka hop, p50 (seconds).
        hop_latency_p99_s: The same, p99 (≥ the p50).
        source: Where the numbers come from (benchmark, date, machine), free text.
        prompt_tokens: Prompt tokens per request of the measurement (informational).
        completion_tokens: Completion tokens per request of the measurement (informational).
    """

    model_config = _FROZEN

    retrieval_cpu_s: Positive
    generator_cpu_s: Positive
    monolith_cpu_s: Positive
    engine_s: Positive
    generation_latency_s: Positive
    generation_latency_p99_s: Positive
    retrieval_latency_s: Positive
    hop_latency_s: Positive
    hop_latency_p99_s: Positive
    source: str | None = None
    prompt_tokens: int | None = Field(default=None, ge=0)
    completion_tokens: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _p99_not_below_p50(self) -> Self:
        for p50, p99 in (("generation_latency_s", "generation_latency_p99_s"), ("hop_latency_s", "hop_latency_p99_s")):
            if getattr(self, p99) < getattr(self, p50):
                raise ValueError(f"{p99} ({getattr(self, p99)}) is below {p50} ({getattr(self, p50)})")
        return self


#: The measured costs that must be given (file or option); derived from the model so there is one list.
REQUIRED_COSTS: tuple[str, ...] = tuple(n for n, f in MeasuredCosts.model_fields.items() if f.is_required())


class Deployment(BaseModel):
    """The team's machines, prices and operating policy.

    Attributes:
        cpu_price: $/hour of one CPU machine (runs retrievers).
        gpu_price: $/hour of one GPU machine (one engine, plus a generator or a monolith process).
        cpu_cores: Cores of one CPU machine.
        gpu_host_cores: CPU cores of a GPU machine usable by the Python process(es) beside the engine.
        monolith_cores: Cores one monolith process can keep busy (Python work is GIL-bound: about 1).
        engine_concurrency: Requests one engine generates at once (its slots).
        max_utilization: ρ_max, the utilization every resource is kept under (0 < ρ_max ≤ 1).
        partition_headroom: Partitions per consumer needed now (≥ 1), so replicas can be added without
            repartitioning.
    """

    model_config = _FROZEN

    cpu_price: Positive
    gpu_price: Positive
    cpu_cores: PositiveInt = DEFAULT_CPU_CORES
    gpu_host_cores: PositiveInt = DEFAULT_GPU_HOST_CORES
    monolith_cores: Positive = DEFAULT_MONOLITH_CORES
    engine_concurrency: PositiveInt = DEFAULT_ENGINE_CONCURRENCY
    max_utilization: Annotated[float, Field(gt=0, le=1)] = DEFAULT_MAX_UTILIZATION
    partition_headroom: Annotated[float, Field(ge=1, allow_inf_nan=False)] = DEFAULT_PARTITION_HEADROOM

    @model_validator(mode="after")
    def _monolith_fits_host(self) -> Self:
        if self.monolith_cores > self.gpu_host_cores:
            raise ValueError(
                f"monolith_cores ({self.monolith_cores}) exceeds gpu_host_cores ({self.gpu_host_cores}): "
                "a monolith process runs on a GPU machine's host cores"
            )
        return self


class PlanInputs(BaseModel):
    """Everything one plan is computed from.

    Attributes:
        rate: Target request rate λ (requests/s).
        costs: Measured per-request costs.
        deployment: Machines, prices and policy.
        p99_budget_s: End-to-end p99 latency budget (seconds); None for no budget.
        max_rate: Top of the break-even scan (requests/s).
        sources: Where each input came from (``file <path>``, ``option``, ``default``); for the report only.
    """

    model_config = _FROZEN

    rate: Positive
    costs: MeasuredCosts
    deployment: Deployment
    p99_budget_s: Positive | None = None
    max_rate: Positive = DEFAULT_MAX_RATE
    sources: dict[str, str] = Field(default_factory=dict)


# -------------------------------------------------------------------------------------------------- results


class Figure(BaseModel):
    """A computed number with its unit and the formula that gave it, numbers substituted.

    Attributes:
        value: The number, in ``unit``.
        unit: Its unit (``req/s``, ``$/h``, ``s``, ...).
        formula: How it was computed, e.g. ``μ_gpu = min(1 / 0.05, 16 / 1.2) = 13.33``.
    """

    model_config = _FROZEN

    value: float
    unit: str
    formula: str


class Count(BaseModel):
    """A whole number of replicas, machines or partitions with the formula that gave it.

    Attributes:
        value: The count.
        formula: How it was computed, e.g. ``GPU machines = ceil(50 / (0.7 × 13.33)) = 6``.
    """

    model_config = _FROZEN

    value: int
    formula: str


class Latency(BaseModel):
    """End-to-end latency estimate of a shape at ρ ≤ ρ_max, compared with the budget.

    Attributes:
        hops: Kafka hops counted (split 3, monolith 2).
        p50: Sum of the stages' p50s (seconds).
        p99: Sum of the stages' p99s (seconds); retrieval enters with its p50 (no p99 is measured).
        budget_s: The p99 budget (seconds), or None.
        over_budget: Whether ``p99`` exceeds the budget; None without a budget.
    """

    model_config = _FROZEN

    hops: int
    p50: Figure
    p99: Figure
    budget_s: float | None
    over_budget: bool | None


class ServiceRate(BaseModel):
    """Service rate μ of one server (an engine, a monolith replica) and the limit that sets it.

    Attributes:
        service_rate: μ (requests/s), with its formula.
        binding: Which limit binds, e.g. ``engine GPU time``, ``engine slots``, ``monolith process CPU``.
    """

    model_config = _FROZEN

    service_rate: Figure
    binding: str


class SplitPlan(BaseModel):
    """The split shape at one rate.

    Attributes:
        rate: λ (requests/s).
        gpu_machines: GPU machines g (one engine and its generator process(es) each).
        binding: What sets g: ``GPU (engine ...)`` or ``GPU-host CPU (generator processes)``.
        generator_processes_per_gpu_machine: GIL-bound generator processes per GPU machine (one per core needed).
        generator_replicas: Generator processes in all.
        gpu_utilization: Engine utilization λ / (g·μ_gpu).
        retriever_cores: CPU cores the retrievers need at ρ_max (unrounded).
        retriever_replicas: Retriever processes (one per core needed).
        cpu_machines: CPU machines for the retrievers.
        in_flight_per_engine: Requests inside one engine, by Little's law (λ/g)·W.
        over_engine_concurrency: Whether that exceeds the engine's slots.
        cost_per_hour: $/hour.
        cost_per_million: $ per million requests.
        latency: End-to-end latency estimate.
    """

    model_config = _FROZEN

    rate: float
    gpu_machines: Count
    binding: str
    generator_processes_per_gpu_machine: Count
    generator_replicas: Count
    gpu_utilization: Figure
    retriever_cores: Figure
    retriever_replicas: Count
    cpu_machines: Count
    in_flight_per_engine: Figure
    over_engine_concurrency: bool
    cost_per_hour: Figure
    cost_per_million: Figure
    latency: Latency


class MonolithPlan(BaseModel):
    """The monolith shape at one rate (one replica per GPU machine).

    Attributes:
        rate: λ (requests/s).
        service_rate: μ_mono of one replica (requests/s).
        binding: What sets μ_mono: ``GPU (engine ...)`` or ``monolith process CPU``.
        replicas: Monolith replicas m = GPU machines.
        utilization: Utilization of the binding resource λ / (m·μ_mono).
        in_flight_per_engine: Requests inside one engine, by Little's law (λ/m)·W.
        over_engine_concurrency: Whether that exceeds the engine's slots.
        cost_per_hour: $/hour.
        cost_per_million: $ per million requests.
        latency: End-to-end latency estimate.
    """

    model_config = _FROZEN

    rate: float
    service_rate: Figure
    binding: str
    replicas: Count
    utilization: Figure
    in_flight_per_engine: Figure
    over_engine_concurrency: bool
    cost_per_hour: Figure
    cost_per_million: Figure
    latency: Latency


class Partitions(BaseModel):
    """Partitions per topic; one layout that serves either shape, so a team can switch without repartitioning.

    Attributes:
        requests: Partitions of the requests topic.
        prompts: Partitions of the prompts topic.
        responses: Partitions of the responses topic.
    """

    model_config = _FROZEN

    requests: Count
    prompts: Count
    responses: Count


class BreakEven(BaseModel):
    """From which request rate the split shape costs less per hour than the monolith.

    Attributes:
        status: ``from_rate`` (split cheaper at every scanned rate from ``rate`` up), ``always`` (at every
            scanned rate), ``never`` (at none), ``not_at_top`` (at some, but not at the top of the scan).
        rate: The break-even rate (requests/s) when ``status`` is ``from_rate`` or ``always``.
        last_not_cheaper_rate: The highest scanned rate where split was not cheaper (requests/s), or None.
        cheaper_points: Scanned rates at which split was cheaper.
        scanned_points: Rates scanned.
        min_rate: Lowest scanned rate (requests/s).
        max_rate: Highest scanned rate (requests/s).
        split_slope: Split $/hour per req/s without ceilings.
        monolith_slope: Monolith $/hour per req/s without ceilings.
        asymptotic_winner: The shape with the lower slope (``split``, ``monolith`` or ``tie``).
        guaranteed_from: Rate above which split is cheaper whatever the ceilings do; None unless split's
            slope is lower.
        summary: One sentence for people.
    """

    model_config = _FROZEN

    status: Literal["from_rate", "always", "never", "not_at_top"]
    rate: float | None
    last_not_cheaper_rate: float | None
    cheaper_points: int
    scanned_points: int
    min_rate: float
    max_rate: float
    split_slope: Figure
    monolith_slope: Figure
    asymptotic_winner: Literal["split", "monolith", "tie"]
    guaranteed_from: Figure | None
    summary: str


class PlanResult(BaseModel):
    """The whole plan: inputs, both shapes at the target rate, partitions, break-even and caveats.

    Attributes:
        inputs: What the plan was computed from.
        engine: μ_gpu of one GPU machine.
        split: The split shape at ``inputs.rate``.
        monolith: The monolith at ``inputs.rate``.
        partitions: Partitions per topic.
        cheaper_at_rate: Which shape costs less per hour at ``inputs.rate`` (``split``, ``monolith``, ``tie``).
        break_even: The break-even scan.
        notes: Assumptions a reader should know.
    """

    model_config = _FROZEN

    inputs: PlanInputs
    engine: ServiceRate
    split: SplitPlan
    monolith: MonolithPlan
    partitions: Partitions
    cheaper_at_rate: Literal["split", "monolith", "tie"]
    break_even: BreakEven
    notes: list[str]


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
    return math.ceil(x - _CEIL_TOLERANCE * max(1.0, abs(x)))


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


def _cheaper(a: float, b: float) -> bool:
    """Whether cost ``a`` is below cost ``b`` by more than float noise."""
    return a < b - _CEIL_TOLERANCE * max(1.0, abs(b))


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
        _cheaper(
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
    winner: Literal["split", "monolith", "tie"] = "split" if _cheaper(s, m) else "monolith" if _cheaper(m, s) else "tie"
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
        "split" if _cheaper(s, m) else "monolith" if _cheaper(m, s) else "tie"
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
