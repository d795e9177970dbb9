"""``python -m devstack up|down|status``: the local Kafka, PostgreSQL + pgvector and LLM server.

Options can also come from environment variables: RAG_DEVSTACK_HOME, RAG_DEVSTACK_KAFKA_PORT,
RAG_DEVSTACK_PG_PORT, RAG_DEVSTACK_LLM_PORT, RAG_DEVSTACK_LLM_ENGINE, RAG_DEVSTACK_LLM_MODEL, RAG_DEVSTACK_ONLY.
"""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from devstack.stack import ALL_SERVICES, DEFAULT_HOME, Stack, StackConfig, StackError

app = typer.Typer(
    help="Run the local stack for ragstream development and tests: Kafka (KRaft), PostgreSQL 18 + pgvector "
    "and the TGI-compatible LLM server, each a detached process with its log under HOME/logs.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()

Home = Annotated[Path, typer.Option(envvar="RAG_DEVSTACK_HOME", help="data, logs and pid files")]
KafkaPort = Annotated[int, typer.Option(envvar="RAG_DEVSTACK_KAFKA_PORT", help="broker port (controller +1)")]
PgPort = Annotated[int, typer.Option(envvar="RAG_DEVSTACK_PG_PORT", help="PostgreSQL port")]
LlmPort = Annotated[int, typer.Option(envvar="RAG_DEVSTACK_LLM_PORT", help="LLM server port")]
LlmEngine = Annotated[str, typer.Option(envvar="RAG_DEVSTACK_LLM_ENGINE", help="LLM server engine")]
LlmModel = Annotated[
    str,
    typer.Option(
        envvar="RAG_DEVSTACK_LLM_MODEL",
        help="smollm2 (SmolLM2-135M-Instruct, offline), tiny (random weights, fast), or a model folder / hub id",
    ),
]
Only = Annotated[
    str,
    typer.Option(envvar="RAG_DEVSTACK_ONLY", help=f"comma-separated subset of {','.join(ALL_SERVICES)}"),
]


def _stack(home: Path, kafka_port: int, pg_port: int, llm_port: int, engine: str, model: str, only: str) -> Stack:
    services = tuple(s.strip() for s in only.split(",") if s.strip()) or ALL_SERVICES
    try:
        cfg = StackConfig(
            home=home.resolve(),
            kafka_port=kafka_port,
            pg_port=pg_port,
            llm_port=llm_port,
            llm_engine=engine,
            llm_model=model,
            services=services,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--only") from exc
    return Stack(cfg)


def export_lines(env: dict[str, str]) -> list[str]:
    """``export KEY=VALUE`` lines, values quoted for a POSIX shell."""
    return [f"export {key}={shlex.quote(value)}" for key, value in env.items()]


def _print_env(stack: Stack) -> None:
    console.print('\n# point ragstream at this stack (or: eval "$(python -m devstack status --env)"):')
    for line in export_lines(stack.env()):
        console.print(line, markup=False, highlight=False)


def _print_status(stack: Stack) -> bool:
    table = Table(title=f"devstack {stack.cfg.home}")
    for col in ("service", "running", "pid", "port", "url", "log"):
        table.add_column(col)
    all_up = True
    for name, st in stack.status().items():
        all_up &= bool(st["running"])
        running = "[green]yes[/green]" if st["running"] else "[red]no[/red]"
        table.add_row(name, running, str(st["pid"] or "-"), str(st["port"]), st["url"], st["log"])
    console.print(table)
    return all_up


@app.command()
def up(
    home: Home = DEFAULT_HOME,
    kafka_port: KafkaPort = 9092,
    pg_port: PgPort = 5432,
    llm_port: LlmPort = 8080,
    llm_engine: LlmEngine = "transformers",
    llm_model: LlmModel = "smollm2",
    only: Only = "",
) -> None:
    """Start the services that are not running yet and wait until each answers (idempotent)."""
    stack = _stack(home, kafka_port, pg_port, llm_port, llm_engine, llm_model, only)
    try:
        stack.up()
    except StackError as exc:
        console.print(f"[red]devstack up failed:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    _print_status(stack)
    _print_env(stack)


@app.command()
def down(
    home: Home = DEFAULT_HOME,
    kafka_port: KafkaPort = 9092,
    pg_port: PgPort = 5432,
    llm_port: LlmPort = 8080,
    llm_engine: LlmEngine = "transformers",
    llm_model: LlmModel = "smollm2",
    only: Only = "",
) -> None:
    """Stop the services started from HOME (SIGTERM, SIGKILL after a bound); data is kept."""
    stack = _stack(home, kafka_port, pg_port, llm_port, llm_engine, llm_model, only)
    stack.down()
    _print_status(stack)


@app.command()
def status(
    home: Home = DEFAULT_HOME,
    kafka_port: KafkaPort = 9092,
    pg_port: PgPort = 5432,
    llm_port: LlmPort = 8080,
    llm_engine: LlmEngine = "transformers",
    llm_model: LlmModel = "smollm2",
    only: Only = "",
    env: Annotated[
        bool,
        typer.Option(
            "--env",
            help='print only the export lines, for eval "$(python -m devstack status --env)"; '
            "a service that is down is named on stderr",
        ),
    ] = False,
) -> None:
    """Show each service; exit 0 when all of them answer, 1 otherwise."""
    stack = _stack(home, kafka_port, pg_port, llm_port, llm_engine, llm_model, only)
    if env:
        down = [name for name, st in stack.status().items() if not st["running"]]
        for line in export_lines(stack.env()):
            print(line)
        if down:
            print(f"devstack: not running: {', '.join(down)} (python -m devstack up)", file=sys.stderr)
        raise typer.Exit(0 if not down else 1)
    all_up = _print_status(stack)
    _print_env(stack)
    raise typer.Exit(0 if all_up else 1)


def main() -> None:
    """Entry point: configure logging once, run the typer app."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    app()


if __name__ == "__main__":
    main()
