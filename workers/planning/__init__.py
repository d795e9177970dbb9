"""Capacity and cost planning (``ragstream plan``): replicas, machines, partitions and cost of both shapes.

:mod:`workers.planning.models` holds the inputs and results (pydantic), :mod:`workers.planning.capacity` the
pure formulas of each shape, :mod:`workers.planning.breakeven` the break-even scan and
:mod:`workers.planning.plan` the whole plan (stdlib + pydantic only); :mod:`workers.planning.command` is the
typer command that reads the inputs and prints the plan.
"""

from workers.planning.breakeven import break_even
from workers.planning.capacity import monolith_shape, split_shape
from workers.planning.models import (
    BreakEven,
    Deployment,
    MeasuredCosts,
    MonolithPlan,
    Partitions,
    PlanInputs,
    PlanResult,
    SplitPlan,
)
from workers.planning.plan import plan_capacity

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
