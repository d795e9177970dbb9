"""``ragstream plan``: read measured costs and the team's inputs, print the capacity and cost of both shapes.

The arithmetic lives in :mod:`workers.planning.capacity`, :mod:`workers.planning.breakeven` and
:mod:`workers.planning.plan`; this module reads the ``--costs`` file (written by benchmark B9) and the
options, reports where each input came from, and prints tables (or ``--json``).
Input errors (missing, ≤ 0, unreadable file) print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from workers.planning.capacity import fmt
from workers.planning.models import (
    DEFAULT_CPU_CORES,
    DEFAULT_ENGINE_CONCURRENCY,
    DEFAULT_GPU_HOST_CORES,
    DEFAULT_MAX_RATE,
    DEFAULT_MAX_UTILIZATION,
    DEFAULT_MONOLITH_CORES,
    DEFAULT_PARTITION_HEADROOM,
    REQUIRED_COSTS,
    Deployment,
    MeasuredCosts,
    PlanInputs,
    PlanResult,
)
from workers.planning.plan import plan_capacity

#: Unit of every input, for the inputs table.
_UNITS = {
    "rate": "req/s",
    "p99_budget_s": "s",
    "cpu_price": "$/h per CPU machine",
    "gpu_price": "$/h per GPU machine",
    "cpu_cores": "cores",
    "gpu_host_cores": "cores",
    "monolith_cores": "cores",
    "engine_concurrency": "requests",
    "max_utilization": "ρ_max",
    "partition_headroom": "× consumers",
    "max_rate": "req/s",
    "retrieval_cpu_s": "CPU-s/req",
    "generator_cpu_s": "CPU-s/req",
    "monolith_cpu_s": "CPU-s/req",
    "engine_s": "GPU-s/req",
    "generation_latency_s": "s (p50)",
    "generation_latency_p99_s": "s (p99)",
    "retrieval_latency_s": "s (p50)",
    "hop_latency_s": "s (p50)",
    "hop_latency_p99_s": "s (p99)",
}
#: Options that have no default and must be given.
_REQUIRED_OPTIONS = ("rate", "cpu_price", "gpu_price")


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _fail(message: str) -> NoReturn:
    typer.echo(f"error (plan): {message}", err=True)
    raise typer.Exit(code=2)


def _validation_message(exc: ValidationError, sources: dict[str, str]) -> str:
    """One line for the first error of a pydantic validation, naming the option or file field."""
    errors = exc.errors()
    first = errors[0]
    msg = str(first["msg"]).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if not first["loc"]:
        return msg + more
    field = str(first["loc"][-1])
    source = sources.get(field, "option")
    where = f"{field} in {source.removeprefix('file ')}" if source.startswith("file ") else _option(field)
    return f"{where}: {msg}, got {first['input']!r}{more}"


def _read_costs_file(path: Path) -> dict[str, Any]:
    """The JSON object of a ``--costs`` file; exits with one line when it cannot be read."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        _fail(f"cannot read --costs {path}: {exc.strerror or exc}")
    except json.JSONDecodeError as exc:
        _fail(f"--costs {path} is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
    if not isinstance(data, dict):
        _fail(f"--costs {path} must hold a JSON object, not {type(data).__name__}")
    return data


def _source(ctx: typer.Context, name: str) -> str:
    """``default`` or ``option``: how the command line set parameter ``name``.

    Compared by the enum member's name: typer ships its own copy of click, whose ``ParameterSource`` is not
    ``click.core.ParameterSource``.
    """
    source = ctx.get_parameter_source(name)
    return "option" if source is not None and source.name != "DEFAULT" else "default"


def plan(
    ctx: typer.Context,
    rate: Annotated[float | None, typer.Option(help="Target request rate λ (requests/s). Required.")] = None,
    costs: Annotated[
        Path | None,
        typer.Option("--costs", help="Measured per-request costs, JSON written by benchmark B9; options override."),
    ] = None,
    retrieval_cpu_s: Annotated[
        float | None, typer.Option(help="CPU-seconds per request of the retriever process.")
    ] = None,
    generator_cpu_s: Annotated[
        float | None, typer.Option(help="CPU-seconds per request of the generator process (engine excluded).")
    ] = None,
    monolith_cpu_s: Annotated[
        float | None, typer.Option(help="CPU-seconds per request of the monolith process (engine excluded).")
    ] = None,
    engine_s: Annotated[
        float | None, typer.Option(help="Engine (GPU) busy seconds per request at saturation, batching included.")
    ] = None,
    generation_latency_s: Annotated[
        float | None, typer.Option(help="Seconds one generation holds an engine slot, p50.")
    ] = None,
    generation_latency_p99_s: Annotated[float | None, typer.Option(help="The same, p99 (seconds).")] = None,
    retrieval_latency_s: Annotated[
        float | None, typer.Option(help="Seconds of retrieval + prompt building, p50.")
    ] = None,
    hop_latency_s: Annotated[float | None, typer.Option(help="Seconds added per Kafka hop, p50.")] = None,
    hop_latency_p99_s: Annotated[float | None, typer.Option(help="Seconds added per Kafka hop, p99.")] = None,
    p99_budget_s: Annotated[
        float | None, typer.Option(help="End-to-end p99 budget (seconds); shapes over it are flagged.")
    ] = None,
    cpu_price: Annotated[float | None, typer.Option(help="$/hour of one CPU machine. Required.")] = None,
    gpu_price: Annotated[float | None, typer.Option(help="$/hour of one GPU machine. Required.")] = None,
    cpu_cores: Annotated[int, typer.Option(help="Cores of one CPU machine.")] = DEFAULT_CPU_CORES,
    gpu_host_cores: Annotated[
        int, typer.Option(help="CPU cores of a GPU machine usable by the Python process(es) beside the engine.")
    ] = DEFAULT_GPU_HOST_CORES,
    monolith_cores: Annotated[
        float, typer.Option(help="Cores one monolith process keeps busy (Python work is GIL-bound).")
    ] = DEFAULT_MONOLITH_CORES,
    engine_concurrency: Annotated[
        int, typer.Option(help="Requests one engine generates at once.")
    ] = DEFAULT_ENGINE_CONCURRENCY,
    max_utilization: Annotated[
        float, typer.Option(help="ρ_max: utilization every resource is kept under.")
    ] = DEFAULT_MAX_UTILIZATION,
    partition_headroom: Annotated[
        float, typer.Option(help="Partitions per consumer needed now (room to add replicas).")
    ] = DEFAULT_PARTITION_HEADROOM,
    max_rate: Annotated[float, typer.Option(help="Top of the break-even scan (requests/s).")] = DEFAULT_MAX_RATE,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as one JSON object.")] = False,
) -> None:
    """Plan replicas, machines, partitions and cost of the split and monolith shapes; find the break-even rate.

    From measured per-request costs (--costs FILE from benchmark B9, or options) and your rate, prices and
    machines: utilization law c = λ / (ρ_max·μ) for every resource, Little's law L = λ·W for engine slots and
    requests in flight. Every count is printed with its formula and numbers.

    Examples:

      ragstream plan --costs b9-costs.json --rate 50 --cpu-price 0.4 --gpu-price 2.5 --p99-budget-s 2.5

      ragstream plan --costs b9-costs.json --rate 200 --cpu-price 0.4 --gpu-price 2.5 --monolith-cpu-s 0.1 --json
    """
    file_data = _read_costs_file(costs) if costs is not None else {}
    measured: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in MeasuredCosts.model_fields:
        if file_data.get(name) is not None:
            measured[name] = file_data[name]
            sources[name] = f"file {costs}"
    cost_options = {
        "retrieval_cpu_s": retrieval_cpu_s,
        "generator_cpu_s": generator_cpu_s,
        "monolith_cpu_s": monolith_cpu_s,
        "engine_s": engine_s,
        "generation_latency_s": generation_latency_s,
        "generation_latency_p99_s": generation_latency_p99_s,
        "retrieval_latency_s": retrieval_latency_s,
        "hop_latency_s": hop_latency_s,
        "hop_latency_p99_s": hop_latency_p99_s,
    }
    for name, value in cost_options.items():
        if value is not None:
            measured[name] = value
            sources[name] = "option"

    given = {"rate": rate, "cpu_price": cpu_price, "gpu_price": gpu_price}
    missing_costs = [n for n in REQUIRED_COSTS if n not in measured]
    missing = [_option(n) for n in (*(n for n in _REQUIRED_OPTIONS if given[n] is None), *missing_costs)]
    if missing:
        hint = (
            f" (measured costs may instead be fields of --costs FILE: {', '.join(missing_costs)})"
            if missing_costs
            else ""
        )
        _fail(f"missing {', '.join(missing)}{hint}")

    deployment_args: dict[str, Any] = {
        "cpu_price": cpu_price,
        "gpu_price": gpu_price,
        "cpu_cores": cpu_cores,
        "gpu_host_cores": gpu_host_cores,
        "monolith_cores": monolith_cores,
        "engine_concurrency": engine_concurrency,
        "max_utilization": max_utilization,
        "partition_headroom": partition_headroom,
    }
    for name in (*deployment_args, "rate", "p99_budget_s", "max_rate"):
        sources[name] = _source(ctx, name)
    try:
        inputs = PlanInputs(
            rate=rate,
            costs=MeasuredCosts(**measured),
            deployment=Deployment(**deployment_args),
            p99_budget_s=p99_budget_s,
            max_rate=max_rate,
            sources=sources,
        )
    except ValidationError as exc:
        _fail(_validation_message(exc, sources))

    result = plan_capacity(inputs)
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
        return
    print_plan(result, Console(highlight=False))


def print_plan(result: PlanResult, console: Console) -> None:
    """Print a plan for people: inputs, both shapes, partitions, the arithmetic, break-even and notes.

    Args:
        result: The plan from :func:`workers.planning.plan.plan_capacity`.
        console: Where to print.
    """
    inputs, split, mono = result.inputs, result.split, result.monolith
    dep = inputs.deployment

    table = Table("input", "value", "unit", "from", title="inputs")
    values: dict[str, Any] = {
        "rate": inputs.rate,
        "p99_budget_s": inputs.p99_budget_s,
        **dep.model_dump(),
        "max_rate": inputs.max_rate,
        **{n: getattr(inputs.costs, n) for n in REQUIRED_COSTS},
    }
    for name, value in values.items():
        shown = "-" if value is None else fmt(value)
        table.add_row(name, shown, _UNITS.get(name, ""), inputs.sources.get(name, ""))
    console.print(table)
    extra = [f"{k}={v}" for k in ("source", "prompt_tokens", "completion_tokens") if (v := getattr(inputs.costs, k))]
    if extra:
        console.print("costs measured: " + ", ".join(extra), markup=False, soft_wrap=True)

    budget = inputs.p99_budget_s
    rho = fmt(dep.max_utilization)

    def vs_budget(over: bool | None) -> str:
        if over is None:
            return "no budget"
        return f"[red]over budget[/] (estimate at ρ ≤ {rho})" if over else "within"

    shapes = Table("", "split", "monolith", title=f"λ = {fmt(inputs.rate)} req/s, ρ_max = {rho}")
    rows = [
        ("GPU machines", str(split.gpu_machines.value), str(mono.replicas.value)),
        ("CPU machines", str(split.cpu_machines.value), "0"),
        ("retriever replicas", str(split.retriever_replicas.value), "-"),
        ("generator replicas", str(split.generator_replicas.value), "-"),
        ("monolith replicas", "-", str(mono.replicas.value)),
        ("binding resource", split.binding, mono.binding),
        ("utilization (binding)", fmt(split.gpu_utilization.value), fmt(mono.utilization.value)),
        (
            "in flight per engine",
            f"{fmt(split.in_flight_per_engine.value)} of {dep.engine_concurrency}"
            + (" [red]OVER[/]" if split.over_engine_concurrency else ""),
            f"{fmt(mono.in_flight_per_engine.value)} of {dep.engine_concurrency}"
            + (" [red]OVER[/]" if mono.over_engine_concurrency else ""),
        ),
        ("cost $/h", fmt(split.cost_per_hour.value), fmt(mono.cost_per_hour.value)),
        ("cost $ per million requests", fmt(split.cost_per_million.value), fmt(mono.cost_per_million.value)),
        ("latency p50 s", fmt(split.latency.p50.value), fmt(mono.latency.p50.value)),
        ("latency p99 s (estimate)", fmt(split.latency.p99.value), fmt(mono.latency.p99.value)),
        (
            f"p99 vs budget {fmt(budget)} s" if budget is not None else "p99 vs budget",
            vs_budget(split.latency.over_budget),
            vs_budget(mono.latency.over_budget),
        ),
    ]
    for row in rows:
        shapes.add_row(*row)
    console.print(shapes)

    parts = Table("topic", "partitions", title=f"partitions (headroom {fmt(dep.partition_headroom)})")
    parts.add_row("requests", str(result.partitions.requests.value))
    parts.add_row("prompts", str(result.partitions.prompts.value))
    parts.add_row("responses", str(result.partitions.responses.value))
    console.print(parts)

    console.print("[bold]arithmetic[/]")
    formulas = [
        result.engine.service_rate.formula,
        split.gpu_machines.formula,
        split.generator_processes_per_gpu_machine.formula,
        split.generator_replicas.formula,
        split.retriever_cores.formula,
        split.retriever_replicas.formula,
        split.cpu_machines.formula,
        split.gpu_utilization.formula,
        split.in_flight_per_engine.formula,
        split.cost_per_hour.formula,
        split.cost_per_million.formula,
        split.latency.p50.formula,
        split.latency.p99.formula,
        mono.service_rate.formula,
        mono.replicas.formula,
        mono.utilization.formula,
        mono.in_flight_per_engine.formula,
        mono.cost_per_hour.formula,
        mono.cost_per_million.formula,
        mono.latency.p50.formula,
        mono.latency.p99.formula,
        result.partitions.requests.formula,
        result.partitions.prompts.formula,
        result.partitions.responses.formula,
    ]
    for line in formulas:
        console.print(f"  {line}", markup=False, soft_wrap=True)

    be = result.break_even
    if result.cheaper_at_rate == "tie":
        verdict = f"at {fmt(inputs.rate)} req/s both shapes cost {fmt(split.cost_per_hour.value)} $/h"
    else:
        winner, loser = (split, mono) if result.cheaper_at_rate == "split" else (mono, split)
        verdict = (
            f"at {fmt(inputs.rate)} req/s the {result.cheaper_at_rate} is cheaper: "
            f"{fmt(winner.cost_per_hour.value)} $/h vs {fmt(loser.cost_per_hour.value)} $/h"
        )
    console.print(f"[bold]{verdict}[/]", soft_wrap=True)
    console.print(
        f"[bold]break-even:[/] {be.summary} ({be.scanned_points} rates scanned from {fmt(be.min_rate)} to "
        f"{fmt(be.max_rate)} req/s; the ceilings make cost a step function, so the rate is scanned, not solved)",
        soft_wrap=True,
    )
    console.print(f"  {be.split_slope.formula}", markup=False, soft_wrap=True)
    console.print(f"  {be.monolith_slope.formula}", markup=False, soft_wrap=True)
    if be.guaranteed_from is not None:
        console.print(f"  {be.guaranteed_from.formula}", markup=False, soft_wrap=True)
    console.print(f"  asymptotic winner (lower slope): {be.asymptotic_winner}", soft_wrap=True)
    console.print("[bold]notes[/]")
    for note in result.notes:
        console.print(f"  - {note}", markup=False, soft_wrap=True)
