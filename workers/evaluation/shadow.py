"""Run a shadow pipeline: the same workers on a run's shadow topics with another configuration, until every
replayed request is answered.

:func:`run_shadow` runs a :class:`workers.evaluation.shadow_plan.ShadowPlan`:

1. **A used run is not answered again with other settings.** The run's log (:mod:`workers.evaluation.runlog`)
   records the ``--set`` overrides of every shadow that answered it. Other overrides, or answers whose
   settings were not recorded, stop the run before anything starts (:func:`attempt`): counting the old
   answers as the new configuration's is how a shadow would "finish" at once. The same overrides continue the
   earlier attempt (its consumer groups resume where they stopped).
2. **Workers first, then traffic.** The workers start and the call waits until every one of them is consuming
   (``on_ready`` is called then, and only then). When a ``replay`` is given it runs now, so the replayed
   requests do not wait in the topic while the workers load their models: that wait would show as queue time.
3. **Done when every replayed request is answered.** The requests to answer are the distinct request ids of
   the run's requests topic once a replay has recorded itself in the run log (a replay started in another
   terminal is waited for). A progress bar on stderr counts the answers (``progress=False``: none; the log
   has a line every 10 answers). ``until_responses`` and ``timeout_s`` are upper bounds; Ctrl-C / SIGTERM
   stops too. The shadow monitor then gets up to ``monitor_catch_up_s`` to record the answers.

Deadlines: replayed requests keep the deadline they had (a replay copies values unchanged), so a request with
a deadline replayed after it passed is answered ``expired`` by the shadow workers without work; the evaluation
report counts those under the expiry rate. Replay traffic without deadlines, or soon enough.

The workers get SIGTERM at the end (drain, flush, commit), then SIGKILL after a bound. Answers and requests
are read without a consumer group.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.contracts.errors import ConfigError, RagError
from workers.evaluation import runlog
from workers.evaluation.shadow_plan import (  # noqa: F401  (re-exported: the shadow API in one place)
    ShadowPlan,
    answer_table_name,
    parse_overrides,
    plan_shadow,
    trace_table_name,
    worker_env,
)
from workers.settings import KafkaSettings, Settings
from workers.supervisor import WorkerProcesses

log = logging.getLogger(__name__)


class ShadowError(RagError):
    """A shadow worker exited or did not become ready."""

    error_class = "shadow"


def shadow_processes(plan: ShadowPlan, base_env: Mapping[str, str], log_dir: Path) -> WorkerProcesses:
    """The worker processes of one shadow run (one of each of ``plan.workers``, logs ``<worker>.log``).

    Args:
        plan: what to start (:func:`plan_shadow`).
        base_env: the environment the workers inherit (the CLI passes its own).
        log_dir: folder of the worker logs.
    """
    return WorkerProcesses(
        env=worker_env(base_env, plan),
        log_dir=log_dir,
        replicas={w: 1 for w in plan.workers},
        inherit=False,
        log_name="{worker}.log",
        error=ShadowError,
    )


def attempt(plan: ShadowPlan, previous: runlog.RunLogEntry | None, answers_before: int) -> str:
    """Whether this shadow starts the run afresh (``"fresh"``) or continues an earlier attempt (``"resume"``).

    Args:
        plan: this shadow's plan (its overrides).
        previous: the run log's last ``shadow_start`` entry, ``None`` when there is none.
        answers_before: records already in the run's prompts and responses topics (what earlier shadow
            workers produced).

    Raises:
        ConfigError: the run was answered with other overrides, or has answers whose settings were not
            recorded; the message says how to start a fresh run.
    """
    if answers_before == 0:  # nothing produced yet: whatever was tried before left nothing to mix up
        return "fresh" if previous is None or dict(previous.overrides) != dict(plan.overrides) else "resume"
    fresh = (
        f"start a fresh run under another name (ragstream shadow --run {plan.run}-2 ...), or delete this one "
        f"(ragstream runs delete {plan.run}) and replay again"
    )
    if previous is None:
        raise ConfigError(
            f"run {plan.run!r} already has {answers_before} prompts and answers from a shadow whose settings were not "
            f"recorded; they would be counted as this configuration's: {fresh}"
        )
    if dict(previous.overrides) != dict(plan.overrides):
        old = " ".join(f"{k}={v}" for k, v in sorted(previous.overrides.items())) or "no overrides"
        new = " ".join(f"{k}={v}" for k, v in sorted(plan.overrides.items())) or "no overrides"
        raise ConfigError(
            f"run {plan.run!r} was answered with {old} (shadow of {previous.at:%Y-%m-%d %H:%M:%S} UTC); this shadow "
            f"asks for {new}. Its {answers_before} prompts and answers would be counted as the new configuration's: "
            f"{fresh}"
        )
    return "resume"


def _ids_of(values: list[bytes | None]) -> dict[str, str]:
    """Request id → status (``ok`` when absent) of JSON messages; values that are not such messages are skipped."""
    out: dict[str, str] = {}
    for raw in values:
        try:
            obj = json.loads(raw or b"")
            out.setdefault(str(obj["request_id"]), str(obj.get("status", "ok")))
        except (ValueError, KeyError, TypeError):
            continue
    return out


class ResponseCounter:
    """Counts distinct request ids answered on a topic, reading it without a consumer group.

    Args:
        kafka: connection settings.
        topic: the shadow responses topic.
    """

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        from workers.kafka.reader import assign_at, reader

        self.topic = topic
        self._consumer = reader(kafka, "shadow-count")
        try:
            assign_at(self._consumer, topic, "low")
        except ConfigError:
            self._consumer.close()
            raise ConfigError(f"shadow responses topic {topic!r} not found") from None
        self.ids: set[str] = set()
        self.by_status: dict[str, int] = {}

    def poll(self, timeout_s: float = 0.5) -> int:
        """Read what arrived; returns the number of distinct request ids answered so far."""
        msgs = [m for m in self._consumer.consume(500, timeout=timeout_s) if m.error() is None]
        for rid, status in _ids_of([m.value() for m in msgs]).items():
            if rid not in self.ids:
                self.ids.add(rid)
                self.by_status[status] = self.by_status.get(status, 0) + 1
        return len(self.ids)

    def close(self) -> None:
        """Close the consumer (nothing to commit)."""
        self._consumer.close()


class ReplayedIds:
    """The request ids a shadow run must answer: known once a replay has recorded itself in the run log.

    Args:
        settings: Kafka settings and topic base names.
        prefix: the run's topic prefix.
    """

    def __init__(self, settings: Settings, prefix: str) -> None:
        self.settings = settings
        self.prefix = prefix
        self.replays = 0
        self.ids: set[str] | None = None

    def refresh(self) -> bool:
        """Read the run log; after a new replay entry, read the requests topic's distinct ids. Returns whether
        the requests to answer are known."""
        from workers.kafka.reader import read_topic

        entries = runlog.replays(runlog.read(self.settings.kafka, self.prefix))
        if len(entries) > self.replays:
            topic = self.prefix + self.settings.topics.requests
            self.ids = set(_ids_of([r.value for r in read_topic(self.settings.kafka, topic)]))
            self.replays = len(entries)
            log.info(
                "shadow requests to answer run_prefix=%s replays=%d requests=%d",
                self.prefix,
                self.replays,
                len(self.ids),
            )
        return self.ids is not None


@dataclass
class ShadowResult:
    """How a shadow run ended.

    Attributes:
        run: run name.
        prefix: shadow topic prefix.
        trace_table: the shadow monitor's table (``None`` without a monitor).
        responses: distinct request ids answered on the shadow responses topic.
        expected: distinct request ids replayed into the run (``None`` when no replay was recorded).
        by_status: those answers by status.
        reason: ``all_answered``, ``until_responses``, ``timeout`` or ``interrupted``.
        seconds: wall time (s).
        exit_codes: worker → exit code.
        log_dir: folder of the worker logs.
        attempt: ``fresh`` or ``resume`` (:func:`attempt`).
        replay: what the replay run by this shadow returned, if it ran one.
    """

    run: str
    prefix: str
    trace_table: str | None
    responses: int
    expected: int | None
    by_status: dict[str, int]
    reason: str
    seconds: float
    exit_codes: dict[str, int | None]
    log_dir: Path
    attempt: str = "fresh"
    replay: Any = field(default=None)


class _StopFlag:
    def __init__(self) -> None:
        self._set = False

    def set(self, *_: object) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


def ensure_shadow_topics(settings: Settings, prefix: str, topics_file: Path) -> list[str]:
    """Create the topics of ``topics_file`` under ``prefix`` when missing; returns those created.

    Raises:
        ConfigError: the file is bad or a topic could not be created.
        ServiceUnavailableError: no broker answers.
    """
    from workers.kafka.admin import ensure_topics

    return list(ensure_topics(settings.kafka, topics_file, prefix).created)


def records_in(kafka: KafkaSettings, topic: str) -> int:
    """Records in a topic (sum of high minus low watermarks), 0 when it does not exist."""
    from workers.kafka.reader import reader, watermarks

    consumer = reader(kafka, "shadow-check")
    try:
        return sum(high - low for low, high in watermarks(consumer, topic).values())
    except ConfigError:
        return 0
    finally:
        consumer.close()


def _trace_rows(database_url: str, table: str) -> int:
    """Answered rows of the shadow trace table (0 when it does not exist yet or the database is away)."""
    from workers.adapters.traces import answered_rows

    return answered_rows(database_url, table)


def _progress(enabled: bool, run: str) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn(f"shadow {run}: answered"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def run_shadow(
    settings: Settings,
    plan: ShadowPlan,
    base_env: Mapping[str, str],
    *,
    topics_file: Path,
    log_dir: Path,
    until_responses: int | None = None,
    timeout_s: float | None = None,
    replay: Callable[[], Any] | None = None,
    on_ready: Callable[[str], None] | None = None,
    progress: bool = False,
    ready_timeout_s: float = 300.0,
    monitor_catch_up_s: float = 60.0,
    log_refresh_s: float = 3.0,
) -> ShadowResult:
    """Start the shadow pipeline, replay when asked, and run until every replayed request is answered.

    Args:
        settings: the live settings (Kafka, database, topic base names).
        plan: :func:`plan_shadow`.
        base_env: environment the workers inherit.
        topics_file: topics.yaml, applied under the shadow prefix.
        log_dir: worker log folder.
        until_responses: stop once this many distinct request ids are answered (``None``: no bound).
        timeout_s: stop after this many seconds (``None``: no bound).
        replay: run after every worker is ready (a :func:`workers.evaluation.replay.replay` call into this run);
            ``None``: answer what was or will be replayed by ``ragstream replay``.
        on_ready: called with ``"fresh"`` or ``"resume"`` once every worker is consuming.
        progress: show a progress bar on stderr.
        ready_timeout_s: seconds allowed for the workers to start (model loading included).
        monitor_catch_up_s: seconds allowed for the shadow monitor to record the answers before the workers
            are stopped.
        log_refresh_s: seconds between reads of the run log while the requests to answer are not known.

    Returns:
        A :class:`ShadowResult`.

    Raises:
        ConfigError: the run was answered with other settings (:func:`attempt`), or topics could not be created.
        ShadowError: a worker exited or did not become ready.
        ServiceUnavailableError: no broker answers.
    """
    t0 = time.monotonic()
    ensure_shadow_topics(settings, plan.prefix, topics_file)
    responses_topic = plan.prefix + settings.topics.responses
    produced = records_in(settings.kafka, plan.prefix + settings.topics.prompts) + records_in(
        settings.kafka, responses_topic
    )
    kind = attempt(plan, runlog.last_shadow(runlog.read(settings.kafka, plan.prefix)), produced)
    runlog.append(
        settings.kafka,
        plan.prefix,
        runlog.RunLogEntry(kind="shadow_start", run=plan.run, overrides=dict(plan.overrides)),
    )
    stop = _StopFlag()
    old_term = signal.signal(signal.SIGTERM, stop.set)
    pipeline = shadow_processes(plan, base_env, log_dir)
    counter: ResponseCounter | None = None
    expected = ReplayedIds(settings, plan.prefix)
    reason = "interrupted"
    codes: dict[str, int | None] = {}
    replay_result: Any = None
    try:
        pipeline.start()
        pipeline.wait_ready(ready_timeout_s, stop=stop)
        if stop.is_set():
            raise KeyboardInterrupt
        log.info("shadow run ready run=%s prefix=%s workers=%s", plan.run, plan.prefix, ",".join(plan.workers))
        if on_ready is not None:
            on_ready(kind)
        if replay is not None:
            replay_result = replay()
        counter = ResponseCounter(settings.kafka, responses_topic)
        reason = _answer(
            settings, plan, pipeline, counter, expected, stop, progress, until_responses, timeout_s, t0, log_refresh_s
        )
        if reason in ("all_answered", "until_responses") and plan.trace_table is not None:
            url = settings.database_url.get_secret_value()
            end = time.monotonic() + monitor_catch_up_s
            while _trace_rows(url, plan.trace_table) < len(counter.ids) and time.monotonic() < end:
                pipeline.check_alive()
                time.sleep(0.5)
    except KeyboardInterrupt:
        reason = "interrupted"
    finally:
        signal.signal(signal.SIGTERM, old_term)
        if counter is not None:
            counter.close()
        codes = {name.rsplit("-", 1)[0]: code for name, code in pipeline.stop().items()}
    answered = len(counter.ids) if counter is not None else 0
    try:
        runlog.append(
            settings.kafka,
            plan.prefix,
            runlog.RunLogEntry(kind="shadow_end", run=plan.run, answered=answered, reason=reason),
        )
    except RagError as exc:  # the answers are there; only the log line is missing
        log.warning("could not record the end of the shadow run: %s", exc)
    return ShadowResult(
        run=plan.run,
        prefix=plan.prefix,
        trace_table=plan.trace_table,
        responses=answered,
        expected=len(expected.ids) if expected.ids is not None else None,
        by_status=dict(counter.by_status) if counter is not None else {},
        reason=reason,
        seconds=time.monotonic() - t0,
        exit_codes=codes,
        log_dir=log_dir,
        attempt=kind,
        replay=replay_result,
    )


def _answer(
    settings: Settings,
    plan: ShadowPlan,
    pipeline: WorkerProcesses,
    counter: ResponseCounter,
    expected: ReplayedIds,
    stop: _StopFlag,
    progress: bool,
    until_responses: int | None,
    timeout_s: float | None,
    t0: float,
    log_refresh_s: float,
) -> str:
    """Poll answers until every replayed request is answered or a bound is hit; returns why it stopped."""
    known = expected.refresh()
    if not known:
        log.warning(
            "shadow run %s: nothing replayed yet; waiting for `ragstream replay --run %s ...`", plan.run, plan.run
        )
    last_read = time.monotonic()
    last_logged, last_log_t = -1, time.monotonic()
    with _progress(progress, plan.run) as bar:
        task = bar.add_task("answers", total=None, status="waiting for a replay" if not known else "")
        while not stop.is_set():
            n = counter.poll(0.5)
            if time.monotonic() - last_read > log_refresh_s:  # another replay may have been added
                known = expected.refresh()
                last_read = time.monotonic()
            todo = expected.ids
            status = " ".join(f"{k}={v}" for k, v in sorted(counter.by_status.items()))
            bar.update(
                task,
                completed=n if todo is None else len(todo & counter.ids),
                total=None if todo is None else len(todo),
                status=status,
            )
            if n != last_logged and (
                n - last_logged >= 10
                or time.monotonic() - last_log_t > 15
                or (todo is not None and todo <= counter.ids)
            ):
                log.info(
                    "shadow responses run=%s answered=%d of=%s by_status=%s",
                    plan.run,
                    n,
                    len(todo) if todo is not None else "?",
                    counter.by_status,
                )
                last_logged, last_log_t = n, time.monotonic()
            if until_responses is not None and n >= until_responses:
                return "until_responses"
            if todo is not None and todo <= counter.ids:
                return "all_answered"
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                return "timeout"
            pipeline.check_alive()
    return "interrupted"
