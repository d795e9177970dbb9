"""Capacity and cost planning (``ragstream plan``): replicas, machines, partitions and cost of both shapes.

:mod:`workers.planning.capacity` holds the pure formulas and their data models (stdlib + pydantic only);
:mod:`workers.planning.command` is the typer command that reads the inputs and prints the plan.
"""

from workers.planning.capacity import (
    BreakEven,
    Deployment,
    MeasuredCosts,
    MonolithPlan,
    Partitions,
    PlanInputs,
    PlanResult,
    SplitPlan,
    break_even,
    monolith_shape,
    plan_capacity,
    split_shape,
)

__all__ = [
    "BreakEven",
    "Deployment",
    "MeasuredCosts",
    "MonolithPlan",
    "Partitions",
    "PlanInputs",
    "PlanResult",
    "SplitPlan",
    "break_even",
    "monolith_shape",
    "plan_capacity",
    "split_shape",
]
