"""``ragstream runs list|delete`` (shadow runs and their clean-up) and ``ragstream dlq list|show|replay``.

The logic lives in :mod:`workers.evaluation.catalog` and :mod:`workers.evaluation.dlq`; these commands read
the options and print for people.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from workers.cliutil import command_settings, console
from workers.evaluation.numbers import human

if TYPE_CHECKING:
    from workers.evaluation.dlq import DlqFilter

runs_app = typer.Typer(help="The shadow runs on the cluster: list them, delete one.", no_args_is_help=True)
dlq_app = typer.Typer(
    help="Inspect the dead-letter topic, show a message's raw payload, send chosen messages back.",
    no_args_is_help=True,
)


def _size(n: int) -> str:
    """Bytes for people (kB, MB, GB; powers of 1000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


@runs_app.command("list")
def runs_list() -> None:
    """List the shadow runs: name, created, requests replayed, answers, topics and tables with their size.

    Example:

      ragstream runs list
    """
    from workers.evaluation.catalog import list_runs

    s = command_settings()
    runs, loose = list_runs(s)
    table = Table("run", "created (UTC)", "requests", "answers", "topics", "records", "tables", "size", "settings")
    for r in runs:
        table.add_row(
            r.name,
            r.created.strftime("%Y-%m-%d %H:%M:%S") if r.created else "–",
            human(r.requests),
            human(r.answers),
            str(len(r.topics)),
            human(r.topic_records),
            str(len(r.tables)),
            _size(r.table_bytes),
            " ".join(f"{k}={v}" for k, v in sorted(r.settings.items())) or "–",
        )
    console.print(table)
    console.print(f"{len(runs)} runs (records: in the run's topics; size: its tables)")
    if loose:
        console.print(f"evaluation tables of no run: {', '.join(loose)}", markup=False, highlight=False)


@runs_app.command("delete")
def runs_delete(
    name: Annotated[str, typer.Argument(help="The run to delete (see `ragstream runs list`).")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking.")] = False,
) -> None:
    """Delete a shadow run: its topics rag.eval.<run>.*, consumer groups and tables; asks first.

    Stop the run's shadow before (a group with members cannot be deleted). Live topics, groups and tables
    are never touched.

    Example:

      ragstream runs delete concise --yes
    """
    from workers.contracts.errors import ConfigError
    from workers.evaluation.catalog import delete_run, run_parts

    s = command_settings()
    parts = run_parts(s, name)
    if parts.empty:
        raise ConfigError(
            f"no run named {name!r} (no topic {parts.prefix}*, no group, no table; see `ragstream runs list`)"
        )
    console.print(f"run {name}:", markup=False, highlight=False)
    for label, items in (("topics", parts.topics), ("consumer groups", parts.groups), ("tables", parts.tables)):
        console.print(f"  {label} ({len(items)}): {', '.join(items) or '-'}", markup=False, highlight=False)
    if not yes and not typer.confirm(f"Delete run {name}?", default=False):
        console.print("nothing deleted")
        raise typer.Exit(code=1)
    done = delete_run(s, parts)
    console.print(
        f"deleted run {name}: {len(done.topics)} topics, {len(done.groups)} consumer groups, {len(done.tables)} tables"
    )


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
    """List dead letters: position, source topic/partition/offset, stage, error class, attempts and message.

    Example:

      ragstream dlq list --stage retriever --error-class bad_message
    """
    from workers.evaluation.dlq import DeadLetterRecord, read_dead_letters

    s = command_settings()
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


@dlq_app.command("show")
def dlq_show(
    positions: Annotated[
        str | None, typer.Argument(help="Dead letters to show, as PARTITION:OFFSET list (e.g. 0:12,1:3).")
    ] = None,
    last: Annotated[int, typer.Option(help="Without positions: show the newest this many.")] = 1,
) -> None:
    """Show dead letters in full: where they came from, why they failed, and the original message's raw payload.

    Examples:

      ragstream dlq show

      ragstream dlq show 0:12 --last 3
    """
    from workers.evaluation.dlq import (
        DeadLetterRecord,
        check_positions,
        parse_positions,
        payload_text,
        read_dead_letters,
    )

    s = command_settings()
    topic = s.topics.name("dead_letter")
    records = list(read_dead_letters(s))
    letters = [r for r in records if isinstance(r, DeadLetterRecord)]
    if positions:
        wanted = parse_positions(positions)
        check_positions(wanted, {(r.partition, r.offset) for r in records if isinstance(r, DeadLetterRecord)}, topic)
        chosen = [r for r in letters if (r.partition, r.offset) in wanted]
    else:
        newest = sorted(letters, key=lambda r: (r.letter.last_failure_at, r.partition, r.offset))
        chosen = newest[-max(1, last) :]
    if not chosen:
        console.print(f"no dead letters in {topic}")
        return
    for r in chosen:
        d = r.letter
        console.rule(f"dead letter {r.partition}:{r.offset} of {topic}")
        lines = [
            f"source       {d.source_topic} partition {d.partition} offset {d.offset}",
            f"stage        {d.stage}",
            f"error        {d.error_class}: {d.error_message}",
            f"attempts     {d.attempts} (first failure {d.first_failure_at:%Y-%m-%d %H:%M:%S}, "
            f"last {d.last_failure_at:%Y-%m-%d %H:%M:%S} UTC)",
            f"request id   {d.request_id or '-'}",
            f"key (base64) {d.key or '-'}",
            f"headers      {d.headers}",
            f"payload      {d.value_bytes} bytes{' (truncated in the dead letter)' if d.value_truncated else ''}:",
        ]
        console.print("\n".join(lines), markup=False, highlight=False)
        console.print(payload_text(d), markup=False, highlight=False, soft_wrap=True)


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
    """Send chosen dead letters' original messages back to their source topics (raw bytes, key, headers).

    A message that fails again gets a new dead letter with its attempts counted on. Positions that hold no
    dead letter are an error.

    Examples:

      ragstream dlq replay --error-class bad_message --dry-run

      ragstream dlq replay --positions 0:12,1:3
    """
    from workers.evaluation.dlq import replay_dead_letters

    if not any((positions, stage, error_class, source_topic)):
        raise typer.BadParameter("choose what to replay: --positions, --stage, --error-class or --source-topic")
    s = command_settings()
    report = replay_dead_letters(s, _dlq_filter(stage, error_class, source_topic, positions), dry_run=dry_run)
    for topic, n in sorted(report.by_topic.items()):
        console.print(f"{'would send' if dry_run else 'sent'} {n} to {topic}")
    console.print(f"selected={report.selected} delivered={report.delivered} failed={report.failed}")
    if report.failed:
        raise typer.Exit(1)
