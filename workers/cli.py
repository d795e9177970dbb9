"""The ``ragstream`` command line (typer): topics, schema, ingest, run, ask, replay, shadow, evaluate.

Every command reads its settings from the environment (``RAG_*``, see ``workers/settings.py``) once at
start. Errors that ragstream raises on purpose (unreachable broker or database, bad configuration) print one
line on stderr and exit with status 2, without a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from workers.contracts.errors import RagError

if TYPE_CHECKING:
    from workers.evaluation.dlq import DlqFilter
from workers.logs import configure_logging
from workers.settings import Settings, load_settings

log = logging.getLogger(__name__)
console = Console()

app = typer.Typer(
    name="ragstream",
    help="Streaming RAG inference on Apache Kafka: retriever (CPU), generator (TGI), monitor.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
topics_app = typer.Typer(help="Create and check the Kafka topics of topics.yaml.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")


def _settings() -> Settings:
    s = load_settings()
    configure_logging(s.log_level, s.log_json)
    return s


def _default_topics_file() -> Path:
    here = Path.cwd() / "topics.yaml"
    if here.exists():
        return here
    return Path(__file__).resolve().parent.parent / "topics.yaml"


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
    from workers.retriever.ingest import FolderDocuments, python_docs_documents, read_documents, summary_rows
    from workers.retriever.ingest import ingest as run_ingest

    if not python_docs and path is None:
        raise typer.BadParameter("give a PATH or --python-docs")
    s = _settings()
    read = FolderDocuments(python_docs_documents(), []) if python_docs else read_documents(path)  # type: ignore[arg-type]
    pool = open_pool(s.database_url.get_secret_value(), min_size=1, max_size=2, vector=True)
    try:
        embedder = Embedder.from_settings(s.embedding)
        store = VectorStore(pool, table=s.retriever.table, dimension=embedder.dimension)
        store.ensure_schema()
        store.check_dimension()
        report = run_ingest(read.documents, embedder, store, batch_size=batch_size, progress=True)
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


@app.command()
def run(worker: Annotated[Worker, typer.Argument(help="Which worker to run in this process.")]) -> None:
    """Run one worker until SIGTERM/SIGINT: retriever, generator or monitor (the split shape, each its own consumer
    group), or monolith (retriever → generator in memory, monitor stage in-process; same settings, topics and
    tables, so a deployment can switch shapes)."""
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
    else:
        from workers.monitor.app import run as run_monitor

        run_monitor(s)


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
    src = Table("rank", "document", "chunk", "score", title="sources")
    for i, s in enumerate(resp.sources):
        src.add_row(str(i + 1), s.document_id, s.chunk_id, f"{s.score:.4f}")
    console.print(src)
    console.print("timings (ms): " + ", ".join(f"{k}={v:.1f}" for k, v in resp.timings_ms.items()))


@app.command()
def replay(
    run_name: Annotated[
        str | None, typer.Option("--run", help="Run name: goes into the shadow prefix and the replay_run header.")
    ] = None,
    topic: Annotated[str | None, typer.Option(help="Topic to replay (default: the requests topic).")] = None,
    from_offset: Annotated[int | None, typer.Option(help="First offset of every partition.")] = None,
    offsets: Annotated[
        str | None, typer.Option(help="Per-partition offsets, inclusive: '0:5-9,1:0-' (P:A-B, P:A-, P:-B, P:A, P).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="First record time, ISO 8601 with zone (2026-11-30T10:00:00Z) or epoch ms.")
    ] = None,
    until: Annotated[str | None, typer.Option(help="End record time (exclusive), same forms as --since.")] = None,
    request_ids: Annotated[
        str | None, typer.Option(help="Only these request ids: a file (one per line) or comma-separated UUIDs.")
    ] = None,
    prefix: Annotated[
        str, typer.Option(help="Shadow topic prefix; {run} is replaced by the run name.")
    ] = "rag.eval.{run}.",
    topics_file: Annotated[
        Path | None, typer.Option(help="topics.yaml whose topics are created with the prefix if missing.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print start, end and count per partition; produce nothing.")
    ] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
) -> None:
    """Replay a bounded range of a topic into a shadow topic set (rag.eval.<run>.*) for evaluation.

    The range ends at the high watermark taken at the start; no consumer group is joined and no offset is
    committed. Values are copied unchanged; headers replay_run and replay_source are added. Exits 1 when a
    record was not delivered.

    Examples:

      ragstream replay --run tmpl-v2 --since 2026-11-30T10:00:00Z --until 2026-11-30T11:00:00Z

      ragstream replay --run r1 --offsets 0:5-9,1:0- --dry-run

      ragstream replay --run r2 --request-ids ids.txt
    """
    from workers.evaluation.replay import replay as run_replay
    from workers.evaluation.replay_plan import build_plan

    s = _settings()
    plan = build_plan(
        topic=topic,
        from_offset=from_offset,
        offsets=offsets,
        since=since,
        until=until,
        request_ids=request_ids,
    )
    report = run_replay(
        s,
        plan,
        run=run_name,
        prefix=prefix,
        topics_file=topics_file or _default_topics_file(),
        dry_run=dry_run,
        progress=not no_progress and not dry_run,
    )
    title = f"{report.source_topic} -> {report.target_topic or '(dry run)'}"
    if dry_run:
        table = Table("partition", "start", "end", "count", title=title)
        for p in report.partitions:
            table.add_row(str(p.partition), str(p.start), str(p.end), str(p.count))
        console.print(table)
        console.print(f"dry run: {report.in_range} records in range over {len(report.partitions)} partitions")
        return
    table = Table("partition", "start", "end", "read", "produced", "failed", title=title)
    for p in report.partitions:
        table.add_row(str(p.partition), str(p.start), str(p.end), str(p.read), str(p.produced), str(p.failed))
    console.print(table)
    console.print(
        f"run={report.run} read={report.read} selected={report.selected} produced={report.produced} "
        f"failed={report.failed} seconds={report.seconds:.1f}"
    )
    if report.missing_request_ids:
        console.print(f"[yellow]{len(report.missing_request_ids)} request ids not found in the range[/]")
    if not report.ok:
        raise typer.Exit(code=1)


@app.command()
def shadow(
    run_name: Annotated[str, typer.Option("--run", help="Run name: shadow topics rag.eval.<run>.*, groups, table.")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="SECTION.KEY=VALUE override of the shadow workers (repeatable)."),
    ] = None,
    until_responses: Annotated[
        int | None, typer.Option(help="Stop once this many request ids are answered on the shadow topic.")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    no_monitor: Annotated[bool, typer.Option("--no-monitor", help="Start no shadow monitor (no trace table).")] = False,
    prefix: Annotated[str, typer.Option(help="Shadow topic prefix; {run} is replaced by the run name.")] = (
        "rag.eval.{run}."
    ),
    topics_file: Annotated[
        Path | None, typer.Option(help="topics.yaml whose topics are created with the prefix if missing.")
    ] = None,
    log_dir: Annotated[
        Path | None, typer.Option(help="Folder of the worker logs (default .ragstream/shadow/<run>).")
    ] = None,
) -> None:
    """Run the workers as a shadow pipeline on a replay run's topics, with another configuration.

    Starts retriever, generator and a monitor (trace table rag_traces_eval_<run>) as subprocesses on the
    topics rag.eval.<run>.*, with consumer groups rag.eval.<run>.<role>; live topics and groups are never
    used. Stops on Ctrl-C, after --until-responses answers, or after --timeout seconds.

    Examples:

      ragstream shadow --run k3-concise --set retriever.top_k=3 --set retriever.template=concise

      ragstream shadow --run new-llm --set llm.url=http://10.0.0.7:8080 --until-responses 500
    """
    from workers.evaluation.shadow import plan_shadow, run_shadow

    s = _settings()
    plan = plan_shadow(s, run_name, set_ or [], prefix_template=prefix, monitor=not no_monitor)
    logs = log_dir or Path(".ragstream") / "shadow" / run_name
    console.print(f"shadow run {plan.run}: topics {plan.prefix}*, table {plan.trace_table or '-'}, logs {logs}")
    for k, v in sorted(plan.env.items()):
        console.print(f"  {k}={v}", markup=False, highlight=False)
    result = run_shadow(
        s,
        plan,
        dict(os.environ),
        topics_file=topics_file or _default_topics_file(),
        log_dir=logs,
        until_responses=until_responses,
        timeout_s=timeout,
    )
    console.print(
        f"run={result.run} stopped={result.reason} answered={result.responses} by_status={result.by_status} "
        f"seconds={result.seconds:.1f} exit_codes={result.exit_codes}"
    )
    if any(c not in (0, None) for c in result.exit_codes.values()):
        raise typer.Exit(code=1)


@app.command()
def evaluate(
    candidate: Annotated[
        str, typer.Option(help="The run to judge: run:NAME (shadow topics), topics:PREFIX or table:NAME.")
    ],
    baseline: Annotated[
        str, typer.Option(help="The run to compare with: live (live topics), run:NAME, topics:PREFIX or table:NAME.")
    ] = "live",
    labels: Annotated[
        Path | None, typer.Option(help='Labelled questions, JSON lines {"q": ..., "topics": [...]}, for hit@k/MRR.')
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for report.html and report.json.")] = Path("eval-report"),
    fail_on: Annotated[
        list[str] | None,
        typer.Option(
            "--fail-on",
            help="Gate (repeatable): METRIC:-X / METRIC:+X% (allowed change against the baseline) or "
            "METRIC>=X / METRIC<=X; exit 1 when one fails.",
        ),
    ] = None,
    no_similarity: Annotated[
        bool, typer.Option("--no-similarity", help="Skip answer similarity (does not load the embedding model).")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds allowed to read each topic.")] = 120.0,
) -> None:
    """Compare a shadow run's answers with the baseline's, by request id; write an HTML + JSON report.

    Per run: counts, error and expiry rates, latency percentiles per stage (ms), tokens, and with --labels
    hit@1, hit@5 and MRR. Between runs: answer similarity (embedding cosine) and overlap of the retrieved
    chunks and documents. Exits 1 when a --fail-on gate regresses, so it can gate a release.

    Examples:

      ragstream evaluate --candidate run:k3-concise --labels questions.jsonl --out report/

      ragstream evaluate --candidate run:k3-concise --baseline table:rag_traces --labels questions.jsonl \\
          --fail-on hit@5:-0.05 --fail-on latency.end_to_end_ms.p50:+20% --fail-on error_rate:+0.01
    """
    from workers.evaluation.evaluate import evaluate as run_evaluate
    from workers.evaluation.gates import parse_gate
    from workers.evaluation.report import write_report
    from workers.evaluation.runs import parse_source

    s = _settings()
    gates = [parse_gate(g) for g in fail_on or []]
    base_src = parse_source(baseline, s.topics.prefix)
    cand_src = parse_source(candidate, s.topics.prefix)
    if base_src == cand_src:
        raise typer.BadParameter("--baseline and --candidate name the same run")
    embedder = None
    if not no_similarity:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the embedding model loads from its local folder
        from workers.adapters.embedding import Embedder

        embedder = Embedder.from_settings(s.embedding)
    try:
        report = run_evaluate(
            s,
            base_src,
            cand_src,
            labels_path=labels,
            gates=gates,
            embed=(lambda texts: embedder.encode(texts).vectors.tolist()) if embedder is not None else None,
            timeout_s=timeout,
        )
    finally:
        if embedder is not None:
            embedder.close()
    json_path, html_path = write_report(report, out)
    b, c = report.baseline, report.candidate
    table = Table("metric", "baseline", "candidate", title=f"{b.source} vs {c.source}")

    def num(v: object, digits: int = 3) -> str:
        return f"{v:.{digits}f}" if isinstance(v, int | float) else "-"

    table.add_row("requests", str(b.counts["total"]), str(c.counts["total"]))
    table.add_row("ok", str(b.counts["ok"]), str(c.counts["ok"]))
    for k, rb, rc in (
        ("error", b.rates.error, c.rates.error),
        ("expired", b.rates.expired, c.rates.expired),
        ("missing", b.rates.missing, c.rates.missing),
    ):
        table.add_row(f"{k} rate", num(rb), num(rc))
    for k in ("hit@1", "hit@5", "mrr"):
        table.add_row(k, num(b.retrieval.get(k)), num(c.retrieval.get(k)))
    e2e_b, e2e_c = b.latency_ms.get("end_to_end_ms"), c.latency_ms.get("end_to_end_ms")
    for p in ("p50", "p90", "p99"):
        table.add_row(
            f"end_to_end_ms {p}",
            num(e2e_b.get(p) if e2e_b is not None else None, 1),
            num(e2e_c.get(p) if e2e_c is not None else None, 1),
        )
    table.add_row("answer similarity mean", "", num(report.compare.answer_similarity.mean))
    table.add_row("chunk Jaccard mean", "", num(report.compare.chunk_jaccard.mean))
    console.print(table)
    for g in report.gates:
        mark = "[green]pass[/]" if g.passed else "[red]FAIL[/]"
        console.print(f"{mark} {g.gate}: {g.reason}", highlight=False)
    console.print(f"wrote {html_path} and {json_path}")
    if not report.passed:
        raise typer.Exit(code=1)


dlq_app = typer.Typer(help="Inspect the dead-letter topic and send chosen messages back.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")


def _dlq_filter(
    stage: str | None, error_class: str | None, source_topic: str | None, positions: str | None
) -> DlqFilter:
    from workers.evaluation.dlq import DlqFilter, parse_positions

    return DlqFilter(
        stage=stage,
        error_class=error_class,
        source_topic=source_topic,
        positions=parse_positions(positions) if positions else frozenset(),
    )


@dlq_app.command("list")
def dlq_list(
    stage: Annotated[str | None, typer.Option(help="Only this stage (retriever, generator, monitor).")] = None,
    error_class: Annotated[str | None, typer.Option(help="Only this error class (e.g. bad_message).")] = None,
    source_topic: Annotated[str | None, typer.Option(help="Only dead letters from this topic.")] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many (newest last).")] = 100,
) -> None:
    """List dead letters: position, source topic/partition/offset, stage, error class and message."""
    from workers.evaluation.dlq import DeadLetterRecord, read_dead_letters

    s = _settings()
    select = _dlq_filter(stage, error_class, source_topic, None)
    table = Table("dlq pos", "source", "stage", "error_class", "attempts", "request_id", "error")
    shown = total = 0
    for rec in read_dead_letters(s):
        if not isinstance(rec, DeadLetterRecord):
            p, o, reason = rec
            table.add_row(f"{p}:{o}", "?", "?", "not_a_dead_letter", "", "", reason[:80])
            continue
        if not select(rec):
            continue
        total += 1
        if shown < limit:
            d = rec.letter
            table.add_row(
                f"{rec.partition}:{rec.offset}",
                f"{d.source_topic}[{d.partition}]@{d.offset}",
                d.stage,
                d.error_class,
                str(d.attempts),
                str(d.request_id or ""),
                d.error_message[:80],
            )
            shown += 1
    console.print(table)
    console.print(f"{total} dead letters matched, {shown} shown (topic {s.topics.name('dead_letter')})")


@dlq_app.command("replay")
def dlq_replay(
    positions: Annotated[
        str | None, typer.Option(help="Dead letters to send back, as PARTITION:OFFSET list, e.g. 0:12,1:3.")
    ] = None,
    stage: Annotated[str | None, typer.Option(help="Only this stage.")] = None,
    error_class: Annotated[str | None, typer.Option(help="Only this error class.")] = None,
    source_topic: Annotated[str | None, typer.Option(help="Only dead letters from this topic.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would be sent; send nothing.")] = False,
) -> None:
    """Send chosen dead letters' original messages back to their source topics (raw bytes, key, headers)."""
    from workers.evaluation.dlq import replay_dead_letters

    if not any((positions, stage, error_class, source_topic)):
        raise typer.BadParameter("choose what to replay: --positions, --stage, --error-class or --source-topic")
    s = _settings()
    report = replay_dead_letters(s, _dlq_filter(stage, error_class, source_topic, positions), dry_run=dry_run)
    for topic, n in sorted(report.by_topic.items()):
        console.print(f"{'would send' if dry_run else 'sent'} {n} to {topic}")
    console.print(f"selected={report.selected} delivered={report.delivered} failed={report.failed}")
    if report.failed:
        raise typer.Exit(1)


from workers.planning.command import plan as _plan_command  # noqa: E402  (registered last, after the other commands)

app.command("plan")(_plan_command)


def main() -> None:
    """Entry point of the ``ragstream`` console script: one-line errors instead of tracebacks."""
    try:
        app()
    except RagError as exc:
        sys.stderr.write(f"error ({exc.error_class}): {' '.join(str(exc).split())}\n")
        sys.exit(2)
    except ValidationError as exc:  # settings from the environment (a request's own limits raise RagError above)
        first = exc.errors()[0]
        what = "settings" if exc.title == "Settings" else f"invalid {exc.title}"
        sys.stderr.write(f"error ({what}): {'.'.join(str(p) for p in first['loc'])}: {first['msg']}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
