"""The ``ragstream`` command line (typer): topics, schema, ingest, run, ask, plan, and the evaluation commands
(replay, shadow, evaluate, runs, dlq; :mod:`workers.evaluation.commands` and
:mod:`workers.evaluation.admin_commands`).

Every command reads its settings from the environment (``RAG_*``, see ``workers/settings.py``) once at
start. Errors that ragstream raises on purpose (unreachable broker or database, bad configuration) print
``error (<class>): <what>`` on stderr (a list of valid values follows on its own lines) and exit with status 2,
without a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.table import Table

from workers.cliutil import command_settings, console, default_topics_file, version_text
from workers.contracts.errors import RagError
from workers.settings import Settings

log = logging.getLogger(__name__)

app = typer.Typer(
    name="ragstream",
    help="Streaming RAG inference on Apache Kafka: retriever (CPU), generator (TGI), monitor.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
topics_app = typer.Typer(help="Create and check the Kafka topics of topics.yaml.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")


def _version(value: bool) -> None:
    if value:
        console.print(version_text(), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and the code's folder, and exit."
        ),
    ] = False,
) -> None:
    """Streaming RAG inference on Apache Kafka: retriever (CPU), generator (TGI), monitor."""


def _settings() -> Settings:
    return command_settings()


def _default_topics_file() -> Path:
    return default_topics_file()


@topics_app.command("apply")
def topics_apply(
    file: Annotated[Path | None, typer.Option(help="topics.yaml to apply (default: ./topics.yaml).")] = None,
    prefix: Annotated[
        str | None, typer.Option(help="Prefix for every topic name (shadow topic sets); default RAG_TOPICS__PREFIX.")
    ] = None,
) -> None:
    """Create the topics of topics.yaml that are missing and report drift; deletes nothing."""
    from workers.kafka.admin import ensure_topics

    s = _settings()
    report = ensure_topics(s.kafka, file or _default_topics_file(), s.topics.prefix if prefix is None else prefix)
    for name in report.created:
        console.print(f"created   {name}")
    for name in report.unchanged:
        console.print(f"ok        {name}")
    for line in report.drift:
        console.print(f"[yellow]drift[/]     {line}")
    console.print(f"{len(report.created)} created, {len(report.unchanged)} unchanged, {len(report.drift)} with drift")


@topics_app.command("list")
def topics_list() -> None:
    """List the topics on the broker with their partition counts."""
    from workers.kafka.admin import check_broker, topic_partitions

    s = _settings()
    check_broker(s.kafka)
    table = Table("topic", "partitions")
    for name, partitions in sorted(topic_partitions(s.kafka).items()):
        table.add_row(name, str(partitions))
    console.print(table)


@app.command()
def schema(
    out: Annotated[Path, typer.Option(help="Folder to write <model>.schema.json files into.")] = Path("schemas"),
) -> None:
    """Write the JSON Schemas of the wire models (Request, Prompt, Response, DeadLetter)."""
    from workers.contracts.messages import WIRE_MODELS

    out.mkdir(parents=True, exist_ok=True)
    for name, model in WIRE_MODELS.items():
        path = out / f"{name}.schema.json"
        path.write_text(json.dumps(model.model_json_schema(), indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {path}")


@app.command()
def ingest(
    path: Annotated[
        Path | None, typer.Argument(help="Folder or file of .txt/.md documents (id = relative path).")
    ] = None,
    python_docs: Annotated[
        bool, typer.Option("--python-docs", help="Ingest Python's reference docs (pydoc_data.topics, 79 topics).")
    ] = False,
    batch_size: Annotated[int, typer.Option(help="Chunks embedded per forward pass.")] = 64,
) -> None:
    """Chunk, embed (all-MiniLM-L6-v2) and upsert documents into the pgvector table; re-ingesting adds nothing.

    Each file of a folder is ingested or rejected on its own (another suffix, an encoding neither UTF-8 nor
    detected, a NUL character, ...); a table at the end names each file; exit status 1 when a file was rejected.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from workers.adapters.embedding import Embedder
    from workers.adapters.pgvector import VectorStore
    from workers.adapters.postgres import open_pool
    from workers.retriever.documents import FolderDocuments, python_docs_documents, read_documents
    from workers.retriever.ingest import file_title, pydoc_title, summary_rows
    from workers.retriever.ingest import ingest as run_ingest

    if not python_docs and path is None:
        raise typer.BadParameter("give a PATH or --python-docs")
    s = _settings()
    read = FolderDocuments(python_docs_documents(), []) if python_docs else read_documents(path)  # type: ignore[arg-type]
    pool = open_pool(s.database_url.get_secret_value(), min_size=1, max_size=2, vector=True)
    try:
        embedder = Embedder.from_settings(s.embedding)
        store = VectorStore.from_settings(pool, s.retriever, embedder.dimension)
        store.ensure_schema()
        store.check_dimension()
        titles = pydoc_title if python_docs else file_title
        report = run_ingest(read.documents, embedder, store, batch_size=batch_size, progress=True, titles=titles)
        rows = summary_rows(read, report)
        if rows:
            table = Table("file", "result", "encoding", "chunks", "reason / note", title="ingestion, file by file")
            for row in rows:
                table.add_row(*row, style="red" if row[1] == "rejected" else None)
            console.print(table)
        rejected = sum(1 for row in rows if row[1] == "rejected")
        console.print(
            f"documents={report.documents - len(report.failed)} rejected={rejected} hidden_skipped={read.hidden} "
            f"chunks={report.chunks} inserted={report.inserted} skipped={report.skipped} "
            f"seconds={report.seconds:.1f} table={s.retriever.table} rows={store.count()}"
        )
    finally:
        pool.close()
    if rejected:
        raise typer.Exit(code=1)


class Worker(StrEnum):
    """The worker processes: the split shape's three, or every stage in one process."""

    retriever = "retriever"
    generator = "generator"
    monitor = "monitor"
    monolith = "monolith"
    gateway = "gateway"


@app.command()
def run(worker: Annotated[Worker, typer.Argument(help="Which worker to run in this process.")]) -> None:
    """Run one worker until SIGTERM/SIGINT: retriever, generator or monitor (the split shape, each its own consumer
    group), or monolith (retriever → generator in memory, monitor stage in-process; same settings, topics and
    tables, so a deployment can switch shapes).

    Settings that matter, per worker (environment variables; all of them: README
    "Configuration"):

    every worker: RAG_KAFKA__BOOTSTRAP_SERVERS, RAG_TOPICS__PREFIX,
    RAG_WORKER__GROUP_ID, RAG_WORKER__MAX_IN_FLIGHT, RAG_WORKER__BATCH_MAX,
    RAG_WORKER__SHUTDOWN_TIMEOUT_S, RAG_WORKER__METRICS_PORT, RAG_LOG_LEVEL,
    RAG_LOG_JSON.

    retriever: RAG_DATABASE_URL, RAG_RETRIEVER__TABLE, RAG_RETRIEVER__TOP_K,
    RAG_RETRIEVER__EF_SEARCH, RAG_RETRIEVER__TEMPLATE (default or concise),
    RAG_RETRIEVER__LLM_TOKENIZER, RAG_LLM__URL (for the token limits),
    RAG_EMBEDDING__MODEL, RAG_EMBEDDING__DEVICE, RAG_EMBEDDING__TORCH_THREADS.

    generator: RAG_LLM__URL, RAG_LLM__API, RAG_LLM__MAX_IN_FLIGHT,
    RAG_LLM__TIMEOUT_S, RAG_LLM__MAX_ATTEMPTS, RAG_LLM__ENGINE,
    RAG_LLM__ENGINE_ARGS, RAG_DATABASE_URL, RAG_GENERATOR__ANSWER_TABLE.

    monitor: RAG_DATABASE_URL, RAG_MONITOR__TABLE, RAG_MONITOR__APP_ID,
    RAG_MONITOR__METRICS_PORT, RAG_MONITOR__WEB_PORT, RAG_RETRY__DATABASE_*.

    monolith: the retriever's and the generator's, RAG_MONITOR__TABLE,
    RAG_MONOLITH__DRAIN_PROMPTS.

    gateway (the OpenAI-compatible HTTP front, one replica): RAG_GATEWAY__PORT,
    RAG_GATEWAY__REPLY_PARTITION, RAG_GATEWAY__API_KEYS_SHA256,
    RAG_GATEWAY__RATE_LIMIT_PER_S, RAG_GATEWAY__MAX_BODY_BYTES,
    RAG_GATEWAY__TIMEOUT_S.
    """
    _stop_cleanly_while_starting()
    s = _settings()
    if worker is Worker.retriever:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from workers.retriever.app import serve as serve_retriever

        asyncio.run(serve_retriever(s))
    elif worker is Worker.generator:
        from workers.generator.app import serve as serve_generator

        asyncio.run(serve_generator(s))
    elif worker is Worker.monolith:
        from workers.monolith.app import serve as serve_monolith

        asyncio.run(serve_monolith(s))
    elif worker is Worker.gateway:
        from workers.gateway.app import serve as serve_gateway

        asyncio.run(serve_gateway(s))
    else:
        from workers.monitor.app import run as run_monitor

        run_monitor(s)


def _stop_cleanly_while_starting() -> None:
    """Until the worker installs its own graceful SIGTERM handler (once it consumes or serves), SIGTERM ends the
    process with status 0: it arrives while the process imports and loads its model, before anything was consumed
    (an orchestrator stopping a replica that is still starting). Without this the process dies *by* the signal
    (status -15), which supervisors and the chaos run count as an unclean exit."""

    def stop(signum: int, _frame: object) -> None:
        sys.stderr.write(f"stopped by signal {signum} while starting (nothing consumed yet)\n")
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)


@app.command("gateway-key")
def gateway_key() -> None:
    """Print a new API key for the gateway and the SHA-256 digest to put into RAG_GATEWAY__API_KEYS_SHA256.

    The key is shown once; the gateway keeps only its digest.
    """
    from workers.gateway.limits import new_key

    key, digest = new_key()
    typer.echo(f"key:    {key}\nsha256: {digest}")  # plain lines (no wrapping): they are copied
    typer.echo(f"export RAG_GATEWAY__API_KEYS_SHA256='[\"{digest}\"]'")


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question to answer.")],
    top_k: Annotated[int | None, typer.Option(help="Passages to retrieve (default RAG_RETRIEVER__TOP_K).")] = None,
    document: Annotated[list[str] | None, typer.Option(help="Only search these document ids (repeatable).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Upper bound of generated tokens.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 120.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole Response as JSON.")] = False,
) -> None:
    """Send one question through Kafka and print the answer, its sources and stage timings."""
    from workers.client import RagClient, build_request

    s = _settings()
    filters: dict[str, str | list[str]] = {"document_id": list(document)} if document else {}
    # checked before connecting: a question over its limits is a one-line error, whether or not a broker is there
    req = build_request(question, top_k=top_k, filters=filters, max_new_tokens=max_new_tokens)
    with RagClient(s) as client:
        resp = client.ask(req, timeout_s=timeout)
    if as_json:
        console.print_json(resp.model_dump_json())
        return
    print_response(question, resp)


def print_response(question: str, resp: object) -> None:
    """Print a Response for a person: answer, sources with scores, stage timings (ms)."""
    from workers.contracts.messages import Response

    assert isinstance(resp, Response)
    console.rule(f"[bold]{question}")
    if resp.status == "no_context":
        console.print("[yellow]status=no_context[/] (no passage found; the model was not asked):")
        console.print(resp.answer, markup=False, highlight=False)
    elif resp.status != "ok":
        console.print(
            f"[red]status={resp.status}[/] {resp.error.error_class if resp.error else ''}: "
            f"{resp.error.message if resp.error else ''}"
        )
    else:
        console.print(
            f"[bold]answer[/] ({resp.model_id}, {resp.usage.completion_tokens} tokens, finish={resp.finish_reason}):"
        )
        console.print(resp.answer, markup=False, highlight=False)
    src = Table("rank", "document", "chunk", "score", "cited", title="sources")
    for i, s in enumerate(resp.sources):
        src.add_row(str(i + 1), s.document_id, s.chunk_id, f"{s.score:.4f}", s.cited_by if s.cited else "no")
    console.print(src)
    if resp.groundedness is not None:
        console.print(f"groundedness (share of the answer's words in its cited passages): {resp.groundedness:.2f}")
    console.print("timings (ms): " + ", ".join(f"{k}={v:.1f}" for k, v in resp.timings_ms.items()))


# Registered last, after the commands above (the order of `ragstream --help`).
from workers.evaluation.admin_commands import dlq_app, runs_app  # noqa: E402
from workers.evaluation.commands import evaluate, replay, shadow  # noqa: E402
from workers.planning.command import plan as _plan_command  # noqa: E402

app.command()(replay)
app.command()(shadow)
app.command()(evaluate)
app.add_typer(runs_app, name="runs")
app.add_typer(dlq_app, name="dlq")
app.command("plan")(_plan_command)


def error_text(exc: RagError) -> str:
    """``error (<class>): <message>``: the message's first line with its spaces collapsed, later lines (a list
    of valid values) kept as they are, indented."""
    first, *rest = str(exc).strip().split("\n") or [""]
    text = f"error ({exc.error_class}): {' '.join(first.split())}"
    return text + "".join(f"\n  {line}" for line in rest if line.strip())


def main() -> None:
    """Entry point of the ``ragstream`` console script: one-line errors instead of tracebacks."""
    try:
        app()
    except RagError as exc:
        sys.stderr.write(error_text(exc) + "\n")
        sys.exit(2)
    except ValidationError as exc:  # settings from the environment (a request's own limits raise RagError above)
        first = exc.errors()[0]
        what = "settings" if exc.title == "Settings" else f"invalid {exc.title}"
        sys.stderr.write(f"error ({what}): {'.'.join(str(p) for p in first['loc'])}: {first['msg']}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
