"""The planner's formulas on hand-computed cases (the arithmetic is in the comments; no number comes from the code).

Two sets of inputs:

* ``B9``: the example costs file (engine_s 0.05, generation 1.2 s, 16 slots, ρ_max 0.7, $2.5/GPU h, $0.4/CPU h).
  μ_gpu = min(1/0.05 = 20, 16/1.2 = 13.33) = 13.33 req/s, so one GPU machine takes 0.7 × 13.33 = 9.333 req/s.
* ``CLEAN``: round numbers for the break-even cases (engine_s 0.1, generation 1 s, 100 slots, ρ_max 0.5,
  $1 per machine-hour). μ_gpu = min(10, 100) = 10, so one GPU machine takes 0.5 × 10 = 5 req/s.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from workers.planning.breakeven import break_even, scan_rates
from workers.planning.capacity import (
    ceil_count,
    cost_per_million,
    engine_capacity,
    in_flight,
    latency_estimate,
    monolith_capacity,
    monolith_shape,
    partitions,
    servers_for_utilization,
    slot_service_rate,
    split_shape,
)
from workers.planning.models import Deployment, MeasuredCosts, PlanInputs
from workers.planning.plan import plan_capacity

B9 = MeasuredCosts(
    retrieval_cpu_s=0.012,
    generator_cpu_s=0.004,
    monolith_cpu_s=0.015,
    engine_s=0.05,
    generation_latency_s=1.2,
    generation_latency_p99_s=2.0,
    retrieval_latency_s=0.05,
    hop_latency_s=0.005,
    hop_latency_p99_s=0.02,
)
B9_DEPLOY = Deployment(cpu_price=0.4, gpu_price=2.5)

CLEAN = MeasuredCosts(
    retrieval_cpu_s=0.01,
    generator_cpu_s=0.001,
    monolith_cpu_s=0.25,
    engine_s=0.1,
    generation_latency_s=1.0,
    generation_latency_p99_s=2.0,
    retrieval_latency_s=0.05,
    hop_latency_s=0.005,
    hop_latency_p99_s=0.02,
)
CLEAN_DEPLOY = Deployment(cpu_price=1.0, gpu_price=1.0, max_utilization=0.5, engine_concurrency=100)

INTEGERS_1_TO_20 = [float(n) for n in range(1, 21)]


# ------------------------------------------------------------------------------------------------ relations


def test_littles_law_both_ways() -> None:
    # L = λW: 50/6 req/s × 1.2 s = 10 requests; λ_max = L/W = 16 / 1.2 = 13.333 req/s
    assert in_flight(50 / 6, 1.2) == pytest.approx(10.0)
    assert slot_service_rate(16, 1.2) == pytest.approx(13.3333, rel=1e-4)


def test_utilization_law_and_ceiling_ignore_float_noise() -> None:
    # c = λ / (ρ_max·μ) = 50 / (0.7 × 20) = 3.571
    assert servers_for_utilization(50, 20, 0.7) == pytest.approx(3.5714, rel=1e-4)
    # 2.1 / 0.7 is 3.0000000000000004 in floats: 3 servers, not 4
    assert ceil_count(servers_for_utilization(2.1, 1.0, 0.7)) == 3
    assert ceil_count(3.0001) == 4
    assert ceil_count(0.2) == 1


def test_cost_per_million() -> None:
    # 3.6 $/h at 1 req/s: 3.6 / 3600 $ per request = 0.001 $ → 1000 $ per million
    assert cost_per_million(3.6, 1.0) == pytest.approx(1000.0)
    # 15.4 $/h at 50 req/s: 15.4 / 180000 × 1e6 = 85.556
    assert cost_per_million(15.4, 50.0) == pytest.approx(85.5556, rel=1e-5)


def test_engine_slots_bind() -> None:
    # min(1/0.05 = 20, 16/1.2 = 13.33): the slots (Little's law) bind
    engine = engine_capacity(B9, B9_DEPLOY)
    assert engine.service_rate.value == pytest.approx(13.3333, rel=1e-4)
    assert engine.binding == "engine slots"
    assert "min(1 / 0.05, 16 / 1.2) = min(20, 13.33) = 13.33" in engine.service_rate.formula


def test_engine_gpu_time_binds() -> None:
    # engine_s 0.1: min(1/0.1 = 10, 16/1.2 = 13.33) = 10, the GPU time binds
    engine = engine_capacity(B9.model_copy(update={"engine_s": 0.1}), B9_DEPLOY)
    assert engine.service_rate.value == pytest.approx(10.0)
    assert engine.binding == "engine GPU time"


# -------------------------------------------------------------------------------------------------- shapes


def test_split_at_50_req_s() -> None:
    s = split_shape(50, B9, B9_DEPLOY)
    # g = max(ceil(50 / (0.7 × 13.33)) = ceil(5.357) = 6, ceil(50 × 0.004 / (0.7 × 8)) = ceil(0.0357) = 1, 1) = 6
    assert s.gpu_machines.value == 6
    assert s.binding == "GPU (engine slots)"
    assert s.gpu_machines.formula.endswith("= max(ceil(5.357), ceil(0.03571), 1) = 6")
    # generator processes per machine = max(1, ceil((50/6) × 0.004 / 0.7 = 0.0476)) = 1 → 6 replicas
    assert s.generator_processes_per_gpu_machine.value == 1
    assert s.generator_replicas.value == 6
    # retriever cores = 50 × 0.012 / 0.7 = 0.857 → 1 replica on max(1, ceil(0.857 / 8)) = 1 CPU machine
    assert s.retriever_cores.value == pytest.approx(0.85714, rel=1e-4)
    assert s.retriever_replicas.value == 1
    assert s.cpu_machines.value == 1
    # ρ = 50 / (6 × 13.33) = 0.625; in flight per engine = (50/6) × 1.2 = 10 < 16 slots
    assert s.gpu_utilization.value == pytest.approx(0.625)
    assert s.in_flight_per_engine.value == pytest.approx(10.0)
    assert s.over_engine_concurrency is False
    # cost = 6 × 2.5 + 1 × 0.4 = 15.4 $/h; 15.4 / (50 × 3600) × 1e6 = 85.56 $/M
    assert s.cost_per_hour.value == pytest.approx(15.4)
    assert s.cost_per_million.value == pytest.approx(85.5556, rel=1e-5)


def test_split_retrievers_spread_over_cpu_machines() -> None:
    # retrieval_cpu_s 0.2 at 50 req/s: cores = 50 × 0.2 / 0.7 = 14.29 → 15 replicas, ceil(14.29 / 8 = 1.79) = 2 machines
    s = split_shape(50, B9.model_copy(update={"retrieval_cpu_s": 0.2}), B9_DEPLOY)
    assert s.retriever_replicas.value == 15
    assert s.cpu_machines.value == 2
    # cost = 6 × 2.5 + 2 × 0.4 = 15.8 $/h
    assert s.cost_per_hour.value == pytest.approx(15.8)


def test_split_generator_host_cpu_binds() -> None:
    costs = CLEAN.model_copy(update={"generator_cpu_s": 0.5})
    deploy = CLEAN_DEPLOY.model_copy(update={"gpu_host_cores": 2})
    s = split_shape(19, costs, deploy)
    # engine: ceil(19 / (0.5 × 10)) = ceil(3.8) = 4; host CPU: ceil(19 × 0.5 / (0.5 × 2)) = ceil(9.5) = 10 → g = 10
    assert s.gpu_machines.value == 10
    assert s.binding == "GPU-host CPU (generator processes)"
    # per machine: max(1, ceil((19 / 10) × 0.5 / 0.5)) = ceil(1.9) = 2 GIL-bound processes → 20 replicas
    assert s.generator_processes_per_gpu_machine.value == 2
    assert s.generator_replicas.value == 20
    # cost = 10 × 1 + 1 × 1 (cores 19 × 0.01 / 0.5 = 0.38 → 1 CPU machine) = 11 $/h
    assert s.cost_per_hour.value == pytest.approx(11.0)


def test_monolith_gpu_bound() -> None:
    m = monolith_shape(50, B9, B9_DEPLOY)
    # μ_mono = min(13.33, 1 / 0.015 = 66.67) = 13.33: the GPU binds; m = ceil(50 / (0.7 × 13.33)) = ceil(5.357) = 6
    assert m.binding == "GPU (engine slots)"
    assert m.service_rate.value == pytest.approx(13.3333, rel=1e-4)
    assert m.replicas.value == 6
    # cost = 6 × 2.5 = 15 $/h; 15 / (50 × 3600) × 1e6 = 83.33 $/M
    assert m.cost_per_hour.value == pytest.approx(15.0)
    assert m.cost_per_million.value == pytest.approx(83.3333, rel=1e-5)
    assert m.in_flight_per_engine.value == pytest.approx(10.0)


def test_monolith_cpu_bound() -> None:
    costs = B9.model_copy(update={"monolith_cpu_s": 0.1})
    m = monolith_shape(50, costs, B9_DEPLOY)
    # μ_mono = min(13.33, 1 / 0.1 = 10) = 10: the process's CPU binds; m = ceil(50 / (0.7 × 10)) = ceil(7.14) = 8
    assert m.binding == "monolith process CPU"
    assert m.service_rate.value == pytest.approx(10.0)
    assert m.replicas.value == 8
    assert m.cost_per_hour.value == pytest.approx(20.0)  # 8 × 2.5
    # two busy cores per process: min(13.33, 2 / 0.1 = 20) = 13.33, the GPU binds again
    two_cores = monolith_capacity(costs, B9_DEPLOY.model_copy(update={"monolith_cores": 2.0}))
    assert two_cores.binding == "GPU (engine slots)"


def test_at_least_one_of_everything_at_a_tiny_rate() -> None:
    # 0.01 req/s: every count rounds up to 1
    s = split_shape(0.01, B9, B9_DEPLOY)
    m = monolith_shape(0.01, B9, B9_DEPLOY)
    assert (s.gpu_machines.value, s.cpu_machines.value, s.retriever_replicas.value, s.generator_replicas.value) == (
        1,
        1,
        1,
        1,
    )
    assert m.replicas.value == 1


# --------------------------------------------------------------------------------------------- partitions


def test_partitions_follow_the_monolith_when_it_has_more_replicas() -> None:
    # retrievers 1, monolith 6, generators 6, headroom 2: requests ceil(2 × max(1, 6)) = 12, prompts ceil(2 × 6) = 12
    p = partitions(split_shape(50, B9, B9_DEPLOY), monolith_shape(50, B9, B9_DEPLOY), 2.0)
    assert (p.requests.value, p.prompts.value, p.responses.value) == (12, 12, 12)


def test_partitions_with_fractional_headroom() -> None:
    costs = B9.model_copy(update={"retrieval_cpu_s": 0.2})
    split, mono = split_shape(50, costs, B9_DEPLOY), monolith_shape(50, costs, B9_DEPLOY)
    # retrievers 15 (cores 14.29), monolith 6, generators 6; headroom 2.5:
    # requests ceil(2.5 × max(15, 6)) = ceil(37.5) = 38; prompts ceil(2.5 × 6) = 15; responses = requests = 38
    p = partitions(split, mono, 2.5)
    assert (p.requests.value, p.prompts.value, p.responses.value) == (38, 15, 38)
    assert p.requests.formula.endswith("ceil(2.5 × max(15, 6)) = 38")
    # headroom 1: exactly one partition per consumer of the largest group
    p1 = partitions(split, mono, 1.0)
    assert (p1.requests.value, p1.prompts.value) == (15, 6)


# ------------------------------------------------------------------------------------------------ latency


def test_latency_hops_and_budget_flag() -> None:
    # split: 0.05 + 1.2 + 3 × 0.005 = 1.265 s p50; 0.05 + 2.0 + 3 × 0.02 = 2.11 s p99
    # monolith: 0.05 + 1.2 + 2 × 0.005 = 1.26 s p50; 0.05 + 2.0 + 2 × 0.02 = 2.09 s p99
    split = split_shape(50, B9, B9_DEPLOY, budget_s=2.1)
    mono = monolith_shape(50, B9, B9_DEPLOY, budget_s=2.1)
    assert (split.latency.hops, mono.latency.hops) == (3, 2)
    assert split.latency.p50.value == pytest.approx(1.265)
    assert split.latency.p99.value == pytest.approx(2.11)
    assert mono.latency.p50.value == pytest.approx(1.26)
    assert mono.latency.p99.value == pytest.approx(2.09)
    # budget 2.1 s: split (2.11) over, monolith (2.09) within
    assert split.latency.over_budget is True
    assert mono.latency.over_budget is False
    assert latency_estimate(B9, 3).over_budget is None


# --------------------------------------------------------------------------------------------- break-even


def test_break_even_found_after_a_pocket() -> None:
    # split(λ) = ceil(λ/5) GPU + 1 CPU machine (cores λ × 0.01 / 0.5 ≤ 8 up to 400 req/s), at $1 each;
    # monolith μ = min(10, 1/0.25 = 4) = 4, so m = ceil(λ/2), at $1.
    #   λ = 1..2: 2 vs 1; 3..4: 2 vs 2 (tie); 5: 2 vs 3 (split cheaper: a pocket); 6: 3 vs 3 (tie);
    #   7: 3 vs 4, and cheaper at every λ ≥ 7 (m − g ≥ 2 there).
    be = break_even(CLEAN, CLEAN_DEPLOY, rates=INTEGERS_1_TO_20)
    assert be.status == "from_rate"
    assert be.rate == 7.0
    assert be.last_not_cheaper_rate == 6.0
    assert be.cheaper_points == 15  # λ = 5 and 7..20
    # slopes: split 1 × 1/(0.5 × 10) + 1 × 0.01/(0.5 × 8) = 0.2 + 0.0025 = 0.2025; monolith 1/(0.5 × 4) = 0.5
    assert be.split_slope.value == pytest.approx(0.2025)
    assert be.monolith_slope.value == pytest.approx(0.5)
    assert be.asymptotic_winner == "split"
    # certainly cheaper above (1 + 1) / (0.5 − 0.2025) = 6.72 req/s
    assert be.guaranteed_from is not None
    assert be.guaranteed_from.value == pytest.approx(6.7227, rel=1e-4)


def test_break_even_on_the_default_grid_lies_between_6_and_7() -> None:
    # the default grid adds log-spaced rates: the first one above 6 (6.151) already has m = 4 > g + 1 = 3
    be = break_even(CLEAN, CLEAN_DEPLOY, max_rate=1000)
    assert be.status == "from_rate"
    assert be.last_not_cheaper_rate == 6.0
    assert be.rate is not None and 6.0 < be.rate < 7.0
    assert be.guaranteed_from is not None and be.rate <= be.guaranteed_from.value


def test_break_even_never_when_both_shapes_are_gpu_bound() -> None:
    # both use g = m = ceil(λ / 9.333) GPU machines; split adds CPU machines, so it is never cheaper
    be = break_even(B9, B9_DEPLOY, max_rate=1000)
    assert be.status == "never"
    assert be.rate is None
    assert be.cheaper_points == 0
    assert be.summary == "split never cheaper up to 1000 req/s"
    # slopes: split 2.5 / (0.7 × 13.33) + 0.4 × 0.012 / (0.7 × 8) = 0.26786 + 0.000857 = 0.26871; monolith 0.26786
    assert be.split_slope.value == pytest.approx(0.26871, rel=1e-4)
    assert be.monolith_slope.value == pytest.approx(0.26786, rel=1e-4)
    assert be.asymptotic_winner == "monolith"
    assert be.guaranteed_from is None


def test_break_even_always_when_the_monolith_process_is_very_slow() -> None:
    # monolith_cpu_s 10: μ_mono = min(10, 0.1) = 0.1, m = ceil(λ / 0.05); at 0.1 req/s m = 2 ($2) while split
    # needs 1 GPU + 1 CPU machine ($1 + $0.5); the gap only grows with λ
    costs = CLEAN.model_copy(update={"monolith_cpu_s": 10.0})
    be = break_even(costs, CLEAN_DEPLOY.model_copy(update={"cpu_price": 0.5}), max_rate=1000)
    assert be.status == "always"
    assert be.rate == 0.1
    assert be.last_not_cheaper_rate is None
    assert be.cheaper_points == be.scanned_points


def test_break_even_not_at_top_when_split_only_wins_a_pocket() -> None:
    # μ_gpu 10 → 5 req/s per GPU machine; μ_mono = min(10, 1/0.125 = 8) → 4 req/s per replica;
    # retrievers: cores 0.1 λ / 0.5 = 0.2 λ on 1-core machines at $0.5: split(λ) = 1.5 × ceil(λ/5), mono = ceil(λ/4).
    #   λ = 5: 1.5 < 2 (cheaper); 9, 10: 3 = 3; λ ≥ 20: 0.3 λ ≥ λ/4 + 1 > ceil(λ/4): never again.
    costs = CLEAN.model_copy(update={"monolith_cpu_s": 0.125, "retrieval_cpu_s": 0.1})
    deploy = CLEAN_DEPLOY.model_copy(update={"cpu_price": 0.5, "cpu_cores": 1})
    be = break_even(costs, deploy, rates=[float(n) for n in range(1, 101)])
    assert be.status == "not_at_top"
    assert be.rate is None
    assert be.cheaper_points == 1
    assert "first 5 req/s" in be.summary
    # slopes: split 1 × 0.2 + 0.5 × 0.1 / (0.5 × 1) = 0.3; monolith 1 / (0.5 × 8) = 0.25
    assert be.split_slope.value == pytest.approx(0.3)
    assert be.monolith_slope.value == pytest.approx(0.25)
    assert be.asymptotic_winner == "monolith"


def test_scan_rates_grid() -> None:
    grid = scan_rates(1000)
    assert grid[0] == 0.1 and grid[-1] == 1000.0
    assert grid == sorted(set(grid))
    assert all(float(n) in grid for n in range(1, 101))
    assert 101.0 not in grid  # integers stop at 100; above that only the log-spaced points
    assert scan_rates(50)[-1] == 50.0 and 50.0 in scan_rates(50) and 51.0 not in scan_rates(50)
    assert scan_rates(0.05) == [0.05]


# ---------------------------------------------------------------------------------------------- the plan


def test_plan_capacity_puts_it_together() -> None:
    result = plan_capacity(PlanInputs(rate=50, costs=B9, deployment=B9_DEPLOY, p99_budget_s=2.1))
    assert result.cheaper_at_rate == "monolith"  # 15 $/h vs 15.4 $/h
    assert result.split.gpu_machines.value == 6
    assert result.monolith.replicas.value == 6
    assert result.partitions.requests.value == 12
    assert result.break_even.status == "never"
    assert result.split.latency.over_budget is True


# ------------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "update",
    [
        {"engine_s": 0.0},
        {"retrieval_cpu_s": -0.01},
        {"hop_latency_s": float("inf")},
        {"generation_latency_p99_s": 1.0},  # below the p50 of 1.2
        {"hop_latency_p99_s": 0.001},  # below the p50 of 0.005
    ],
)
def test_measured_costs_reject_bad_values(update: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        MeasuredCosts(**(B9.model_dump() | update))


@pytest.mark.parametrize(
    "update",
    [
        {"gpu_price": 0.0},
        {"cpu_price": -1.0},
        {"max_utilization": 0.0},
        {"max_utilization": 1.5},
        {"partition_headroom": 0.5},
        {"cpu_cores": 0},
        {"monolith_cores": 9.0},  # more than the 8 host cores of a GPU machine
    ],
)
def test_deployment_rejects_bad_values(update: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        Deployment(**(B9_DEPLOY.model_dump() | update))


def test_plan_inputs_reject_a_zero_rate() -> None:
    with pytest.raises(ValidationError):
        PlanInputs(rate=0, costs=B9, deployment=B9_DEPLOY)
