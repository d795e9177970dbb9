"""The planner's data models (pydantic, frozen): what a plan is computed from and what it returns.

Inputs: :class:`MeasuredCosts` (benchmark B9's per-request costs), :class:`Deployment` (machines, prices,
policy) and :class:`PlanInputs`. Results: :class:`Figure` and :class:`Count` (a number with the formula that
gave it), :class:`Latency`, :class:`ServiceRate`, the two shapes (:class:`SplitPlan`, :class:`MonolithPlan`),
:class:`Partitions`, :class:`BreakEven` and the whole :class:`PlanResult`. The relations that fill them live in
:mod:`workers.planning.capacity` and :mod:`workers.planning.breakeven`.

Units: rates in requests/s, times in seconds, CPU costs in CPU-seconds per request, engine cost in
GPU-busy seconds per request, prices in $ per machine-hour.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

#: Defaults of :class:`Deployment` and :class:`PlanInputs` (see their attributes for the units).
DEFAULT_CPU_CORES = 8
DEFAULT_GPU_HOST_CORES = 8
DEFAULT_MONOLITH_CORES = 1.0
DEFAULT_ENGINE_CONCURRENCY = 16
DEFAULT_MAX_UTILIZATION = 0.7
DEFAULT_PARTITION_HEADROOM = 2.0
DEFAULT_MAX_RATE = 1000.0
#: Lowest rate of the break-even scan (requests/s).
DEFAULT_MIN_RATE = 0.1

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


class ShapePlan(BaseModel):
    """What every shape's plan at one rate reports.

    Attributes:
        rate: λ (requests/s).
        binding: The resource that sets the replica count (see each shape).
        in_flight_per_engine: Requests inside one engine, by Little's law (λ / engines)·W.
        over_engine_concurrency: Whether that exceeds the engine's slots.
        cost_per_hour: $/hour.
        cost_per_million: $ per million requests.
        latency: End-to-end latency estimate.
    """

    model_config = _FROZEN

    rate: float
    binding: str
    in_flight_per_engine: Figure
    over_engine_concurrency: bool
    cost_per_hour: Figure
    cost_per_million: Figure
    latency: Latency


class SplitPlan(ShapePlan):
    """The split shape at one rate (``binding``: ``GPU (engine ...)`` or ``GPU-host CPU (generator processes)``).

    Attributes:
        gpu_machines: GPU machines g (one engine and its generator process(es) each).
        generator_processes_per_gpu_machine: GIL-bound generator processes per GPU machine (one per core needed).
        generator_replicas: Generator processes in all.
        gpu_utilization: Engine utilization λ / (g·μ_gpu).
        retriever_cores: CPU cores the retrievers need at ρ_max (unrounded).
        retriever_replicas: Retriever processes (one per core needed).
        cpu_machines: CPU machines for the retrievers.
    """

    gpu_machines: Count
    generator_processes_per_gpu_machine: Count
    generator_replicas: Count
    gpu_utilization: Figure
    retriever_cores: Figure
    retriever_replicas: Count
    cpu_machines: Count


class MonolithPlan(ShapePlan):
    """The monolith shape at one rate, one replica per GPU machine (``binding``: what sets μ_mono, ``GPU (engine
    ...)`` or ``monolith process CPU``).

    Attributes:
        service_rate: μ_mono of one replica (requests/s).
        replicas: Monolith replicas m = GPU machines.
        utilization: Utilization of the binding resource λ / (m·μ_mono).
    """

    service_rate: Figure
    replicas: Count
    utilization: Figure


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
