"""``ragstream replay``, ``ragstream shadow`` and ``ragstream evaluate``: evaluating a change on real traffic.

The logic lives in :mod:`workers.evaluation.replay`, :mod:`workers.evaluation.shadow` and
:mod:`workers.evaluation.evaluate`; these functions read the options, call it and print for people.
Every example in the help texts and in the README runs when pasted into a shell as it is (gates use
``:min=``/``:max=``, never a bare ``<`` or ``>``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from workers.cliutil import command_settings, console, default_topics_file
from workers.evaluation.numbers import delta, human

RunOpt = Annotated[str, typer.Option("--run", help="Run name: shadow topics rag.eval.<run>.*, groups, tables.")]
Topic = Annotated[str | None, typer.Option(help="Topic to replay (default: the live requests topic).")]
FromOffset = Annotated[int | None, typer.Option(help="First offset of every partition.")]
Offsets = Annotated[
    str | None, typer.Option(help="Per-partition offsets, inclusive: '0:5-9,1:0-' (P:A-B, P:A-, P:-B, P:A, P).")
]
Since = Annotated[
    str | None,
    typer.Option(help="First record time: ISO 8601 with zone (2026-11-30T10:00:00Z), epoch ms, or back from now (1h)."),
]
Until = Annotated[str | None, typer.Option(help="End record time (exclusive), same forms as --since.")]
RequestIds = Annotated[
    str | None, typer.Option(help="Only these request ids: a file (one per line) or comma-separated UUIDs.")
]
Rate = Annotated[
    str | None,
    typer.Option(help="Replay pace: records per second (5), 'original' (the spacing the records had) or 'burst'."),
]
Prefix = Annotated[str, typer.Option(help="Shadow topic prefix; {run} is replaced by the run name.")]
TopicsFile = Annotated[
    Path | None, typer.Option(help="topics.yaml whose topics are created with the prefix if missing.")
]
NoProgress = Annotated[bool, typer.Option("--no-progress", help="No progress bar.")]


def _print_replay(report: Any) -> None:
    title = f"{report.source_topic} -> {report.target_topic or '(dry run)'}"
    if report.dry_run:
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
        f"request_ids={report.request_ids} failed={report.failed} pace={report.pace} seconds={report.seconds:.1f}",
        soft_wrap=True,
    )
    if report.missing_request_ids:
        console.print(f"[yellow]{len(report.missing_request_ids)} request ids not found in the range[/]")


def replay(
    run_name: Annotated[
        str | None, typer.Option("--run", help="Run name: goes into the shadow prefix and the replay_run header.")
    ] = None,
    topic: Topic = None,
    from_offset: FromOffset = None,
    offsets: Offsets = None,
    since: Since = None,
    until: Until = None,
    request_ids: RequestIds = None,
    rate: Rate = None,
    prefix: Prefix = "rag.eval.{run}.",
    topics_file: TopicsFile = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print start, end and count per partition; produce nothing.")
    ] = False,
    no_progress: NoProgress = False,
) -> None:
    """Replay a bounded range of a topic into a shadow topic set (rag.eval.<run>.*) for evaluation.

    The range ends at the high watermark taken at the start; no consumer group is joined and no offset is
    committed. Values are copied unchanged; headers replay_run and replay_source are added. The run's log
    records the replay (records, distinct request ids), so `ragstream shadow` knows what to answer. Exits 1
    when a record was not delivered. To replay after the shadow workers are up (fair queue times), give the
    same options to `ragstream shadow` instead.

    Examples:

      ragstream replay --run tmpl-v2 --since 1h --dry-run

      ragstream replay --run tmpl-v2 --since 2026-11-30T10:00:00Z --until 2026-11-30T11:00:00Z --rate original

      ragstream replay --run r1 --offsets 0:5-9,1:0- --rate 5
    """
    from workers.evaluation.replay import replay as run_replay
    from workers.evaluation.replay_plan import build_plan, parse_pace

    s = command_settings()
    plan = build_plan(
        topic=topic, from_offset=from_offset, offsets=offsets, since=since, until=until, request_ids=request_ids
    )
    report = run_replay(
        s,
        plan,
        run=run_name,
        prefix=prefix,
        topics_file=topics_file or default_topics_file(),
        dry_run=dry_run,
        progress=not no_progress and not dry_run,
        pace=parse_pace(rate),
    )
    _print_replay(report)
    if not report.ok:
        raise typer.Exit(code=1)


def shadow(
    run_name: RunOpt,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="SECTION.KEY=VALUE override of the shadow workers (repeatable)."),
    ] = None,
    replay_: Annotated[
        bool,
        typer.Option(
            "--replay",
            help="Replay into the run once the workers are ready (implied by --since, --until, --offsets, "
            "--from-offset, --request-ids, --topic).",
        ),
    ] = False,
    topic: Topic = None,
    from_offset: FromOffset = None,
    offsets: Offsets = None,
    since: Since = None,
    until: Until = None,
    request_ids: RequestIds = None,
    rate: Rate = None,
    until_responses: Annotated[
        int | None, typer.Option(help="Stop once this many request ids are answered (default: all replayed).")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    no_monitor: Annotated[bool, typer.Option("--no-monitor", help="Start no shadow monitor (no trace table).")] = False,
    prefix: Prefix = "rag.eval.{run}.",
    topics_file: TopicsFile = None,
    log_dir: Annotated[
        Path | None, typer.Option(help="Folder of the worker logs (default .ragstream/shadow/<run>).")
    ] = None,
    no_progress: NoProgress = False,
) -> None:
    """Answer a run's replayed requests with the workers under other settings; stop when all are answered.

    Starts retriever, generator and a monitor (trace table rag_traces_eval_<run>) as subprocesses on the topics
    rag.eval.<run>.*, with consumer groups rag.eval.<run>.<role>; live topics and groups are never used. Waits
    until every worker is consuming, then (with --since/--until/... or --replay) replays the live requests,
    so that worker start-up is not counted as queue time, and stops when every replayed request is answered
    (progress bar on stderr). Without replay options it answers what `ragstream replay --run <run>` replayed,
    waiting for a replay if there is none yet. A run answered before with other --set values is refused.

    Examples:

      ragstream shadow --run concise --set retriever.template=concise --since 1h --rate original

      ragstream shadow --run k3 --set retriever.top_k=3 --replay

      ragstream shadow --run new-llm --set llm.url=http://10.0.0.7:8080 --timeout 3600
    """
    from workers.evaluation.replay import replay as run_replay
    from workers.evaluation.replay_plan import build_plan, parse_pace
    from workers.evaluation.shadow import plan_shadow, run_shadow

    s = command_settings()
    plan = plan_shadow(s, run_name, set_ or [], prefix_template=prefix, monitor=not no_monitor)
    do_replay = replay_ or any(v is not None for v in (topic, from_offset, offsets, since, until, request_ids))
    if rate is not None and not do_replay:
        raise typer.BadParameter("--rate paces a replay: add --replay or a replay range (--since 1h, ...)")
    pace = parse_pace(rate)
    replay_plan = build_plan(
        topic=topic, from_offset=from_offset, offsets=offsets, since=since, until=until, request_ids=request_ids
    )
    topics = topics_file or default_topics_file()
    logs = log_dir or Path(".ragstream") / "shadow" / run_name
    console.print(f"shadow run {plan.run}: topics {plan.prefix}*, table {plan.trace_table or '-'}, logs {logs}")
    for k, v in sorted(plan.overrides.items()):
        console.print(f"  {k}={v}", markup=False, highlight=False)

    def replay_now() -> Any:
        console.print(f"replaying into {plan.prefix}{s.topics.requests} (pace {pace})")
        report = run_replay(
            s, replay_plan, run=run_name, prefix=prefix, topics_file=topics, progress=not no_progress, pace=pace
        )
        _print_replay(report)
        if not report.ok:
            raise typer.Exit(code=1)
        return report

    def ready(kind: str) -> None:
        again = " (continuing the earlier attempt with the same settings)" if kind == "resume" else ""
        console.print(f"shadow run ready: {', '.join(plan.workers)} consuming{again}")

    result = run_shadow(
        s,
        plan,
        dict(os.environ),
        topics_file=topics,
        log_dir=logs,
        until_responses=until_responses,
        timeout_s=timeout,
        replay=replay_now if do_replay else None,
        on_ready=ready,
        progress=not no_progress,
    )
    expected = "?" if result.expected is None else str(result.expected)
    console.print(
        f"run={result.run} stopped={result.reason} answered={result.responses} of {expected} "
        f"by_status={result.by_status} seconds={result.seconds:.1f} exit_codes={result.exit_codes}",
        soft_wrap=True,
    )
    if result.reason == "timeout" or any(c not in (0, None) for c in result.exit_codes.values()):
        raise typer.Exit(code=1)


def evaluate(
    candidate: Annotated[
        str | None, typer.Option(help="The run to judge: run:NAME (shadow topics), topics:PREFIX or table:NAME.")
    ] = None,
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
            help="Gate (repeatable): METRIC:-X / METRIC:+X% (change allowed against the baseline) or "
            "METRIC:min=X / METRIC:max=X (bound); exit 1 when one fails. --list-metrics names the metrics.",
        ),
    ] = None,
    no_similarity: Annotated[
        bool, typer.Option("--no-similarity", help="Skip answer similarity (does not load the embedding model).")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds allowed to read each topic.")] = 120.0,
    list_metrics: Annotated[
        bool, typer.Option("--list-metrics", help="Print the metric names gates can use and exit.")
    ] = False,
) -> None:
    """Compare a shadow run's answers with the baseline's, by request id; write an HTML + JSON report.

    Per run: counts, error and expiry rates, latency percentiles per stage (ms), tokens, and with --labels
    hit@1, hit@5 and MRR. Between runs: answer similarity (embedding cosine) and overlap of the retrieved
    chunks and documents; the answers side by side. processing_ms (end to end minus queue waits) compares a
    replayed run with the live one; queue and end-to-end times of replayed traffic do not. Exits 1 when a
    --fail-on gate fails, so it can gate a release; a gate on an unknown metric fails before anything is read.

    Examples:

      ragstream evaluate --candidate run:concise --labels ../shared/data/questions_public.jsonl --out eval-report

      ragstream evaluate --candidate run:concise --baseline table:rag_traces --no-similarity \\
          --fail-on hit@5:-0.05 --fail-on latency.p50:+20% --fail-on error_rate:max=0.01
    """
    from workers.evaluation.gates import metric_catalog, metric_help, parse_gate

    if list_metrics:
        console.print(metric_help(), markup=False, highlight=False)
        console.print("\nfull paths:\n  " + "\n  ".join(metric_catalog()), markup=False, highlight=False)
        return
    if candidate is None:
        raise typer.BadParameter("give the run to judge, e.g. --candidate run:NAME", param_hint="--candidate")
    gates = [parse_gate(g) for g in fail_on or []]  # before anything is read: a typo fails at once
    from workers.evaluation.evaluate import evaluate as run_evaluate
    from workers.evaluation.report import write_report
    from workers.evaluation.runs import parse_source

    s = command_settings()
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
    print_report(report)
    console.print(f"wrote {html_path} and {json_path}", soft_wrap=True)
    if not report.passed:
        raise typer.Exit(code=1)


def print_report(report: Any) -> None:
    """The report's main numbers as a table, notes on labels and latency, and the gates' lines."""
    from workers.evaluation.render import latency_note, retrieval_notes

    b, c = report.baseline, report.candidate
    table = Table("metric", "baseline", "candidate", "Δ", title=f"baseline {b.source} vs candidate {c.source}")
    apart = set(report.latency_not_comparable)

    def row(name: str, vb: float | None, vc: float | None, digits: int | None = None) -> None:
        table.add_row(name, human(vb, digits), human(vc, digits), delta(vb, vc, digits))

    row("requests", b.counts["total"], c.counts["total"], 0)
    row("ok", b.counts["ok"], c.counts["ok"], 0)
    for k in ("error", "expired", "missing"):
        row(f"{k} rate", getattr(b.rates, k), getattr(c.rates, k), 3)
    for k in ("hit@1", "hit@5", "mrr"):
        row(k, b.retrieval.get(k), c.retrieval.get(k), 3)
    row("answers citing a passage", b.citations.cited_share, c.citations.cited_share, 3)
    row("groundedness mean", b.citations.groundedness_mean, c.citations.groundedness_mean, 3)
    for stage in ("processing_ms", "end_to_end_ms"):
        eb, ec = b.latency_ms.get(stage), c.latency_ms.get(stage)
        for p in ("p50", "p90", "p99"):
            star = " *" if stage in apart else ""
            row(f"{stage} {p}{star}", eb.get(p) if eb else None, ec.get(p) if ec else None, 0)
    table.add_row("answer similarity mean", "", human(report.compare.answer_similarity.mean, 3), "")
    table.add_row("chunk overlap mean", "", human(report.compare.chunk_overlap.mean, 3), "")
    console.print(table)
    for note in [*retrieval_notes(report), latency_note(report)]:
        console.print(note, markup=False, highlight=False, soft_wrap=True)
    for g in report.gates:
        mark = "[green]pass[/]" if g.passed else "[red]FAIL[/]"
        console.print(f"{mark} {g.gate}: {g.reason}", highlight=False, soft_wrap=True)
        if g.note:
            console.print(f"     note: {g.note}", markup=False, highlight=False, soft_wrap=True)
