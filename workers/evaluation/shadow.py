"""Run a shadow pipeline: the same workers on a run's shadow topics with another configuration.

``ragstream shadow --run NAME --set retriever.top_k=3 --set retriever.template=concise`` starts the retriever,
the generator and (unless ``--no-monitor``) a monitor as ``ragstream run <worker>`` subprocesses with:

* ``RAG_TOPICS__PREFIX=rag.eval.NAME.``: the topics ``ragstream replay --run NAME`` writes to (created here
  from topics.yaml when missing);
* consumer groups named after the run: the workers' default, prefix + role (``rag.eval.NAME.retriever``,
  ``rag.eval.NAME.generator``); an inherited ``RAG_WORKER__GROUP_ID`` is removed so that no shadow worker can
  join a live group; the monitor's app id (its group) is ``rag.eval.NAME.monitor``;
* its own trace table, ``rag_traces_eval_<NAME>`` (``-`` and ``.`` become ``_``), no metrics or web port;
* its own generator answer store, ``rag_answers_eval_<NAME>``: the store is keyed by request id and a replay
  keeps the live request ids, so with the live store the shadow generator would re-emit the live answers;
* the ``--set SECTION.KEY=VALUE`` overrides as ``RAG_SECTION__KEY=VALUE`` (validated against the settings
  models first): another LLM server (``llm.url``), template (``retriever.template``), k (``retriever.top_k``),
  index table and chunking (``retriever.table``, ``embedding.chunk_tokens``), ...

Overrides of ``topics.*``, ``worker.group_id``, ``monitor.app_id`` and ``generator.answer_table`` are
refused: they would let a shadow worker read live topics, join a live group or reuse live answers.

Deadlines: replayed requests keep the deadline they had (a replay copies values unchanged), so a request
with a deadline replayed after it passed is answered ``expired`` by the shadow workers without work; the
evaluation report counts those under the expiry rate. Replay traffic without deadlines, or soon enough.

It stops on Ctrl-C / SIGTERM, after ``until_responses`` distinct request ids were answered on the shadow
responses topic, or after ``timeout_s``; the workers get SIGTERM (drain, flush, commit), then SIGKILL after a
bound. The response counter reads the shadow responses topic without a consumer group.
"""

from __future__ import annotations

import logging
import re
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ValidationError

from workers.contracts.errors import ConfigError, RagError
from workers.settings import KafkaSettings, Settings
from workers.supervisor import WORKERS, WorkerProcesses

log = logging.getLogger(__name__)

#: Settings a shadow run may not override (they decide which topics and groups it touches).
FORBIDDEN = ("topics.", "worker.group_id", "monitor.app_id", "generator.answer_table")
#: Inherited variables removed from the workers' environment (they could point at live groups).
REMOVED_ENV = ("RAG_WORKER__GROUP_ID", "RAG_MONITOR__APP_ID")

_SET_RE = re.compile(r"^(?P<section>[a-z_]+)\.(?P<key>[a-z_]+)=(?P<value>.*)$", re.DOTALL)


class ShadowError(RagError):
    """A shadow worker exited or did not become ready."""

    error_class = "shadow"


def trace_table_name(run: str) -> str:
    """The shadow run's trace table: ``rag_traces_eval_<run>`` with other characters than letters, digits
    and ``_`` replaced by ``_`` (at most 51 characters, the recorder's limit)."""
    return ("rag_traces_eval_" + re.sub(r"[^A-Za-z0-9_]", "_", run))[:51]


def answer_table_name(run: str) -> str:
    """The shadow run's generator answer store: ``rag_answers_eval_<run>`` (same character rule, at most 63)."""
    return ("rag_answers_eval_" + re.sub(r"[^A-Za-z0-9_]", "_", run))[:63]


def parse_overrides(items: Sequence[str], settings: Settings) -> dict[str, str]:
    """Turn ``SECTION.KEY=VALUE`` items into ``RAG_SECTION__KEY`` environment variables, validated.

    Each value is checked by building the section's settings model with it, so a typo or a wrong type fails
    here rather than in a worker.

    Args:
        items: the ``--set`` items.
        settings: the current settings (the section's other values).

    Returns:
        ``{"RAG_RETRIEVER__TOP_K": "3", ...}``.

    Raises:
        ConfigError: malformed item, unknown section or key, a forbidden key, or an invalid value.
    """
    env: dict[str, str] = {}
    updates: dict[str, dict[str, str]] = {}
    for item in items:
        m = _SET_RE.match(item.strip())
        if m is None:
            raise ConfigError(f"bad --set {item!r}: use SECTION.KEY=VALUE, e.g. retriever.top_k=3")
        section, key, value = m["section"], m["key"], m["value"]
        dotted = f"{section}.{key}"
        if any(dotted == f or (f.endswith(".") and dotted.startswith(f)) for f in FORBIDDEN):
            raise ConfigError(f"--set {dotted} is not allowed: the shadow run sets topics and groups itself")
        sec = getattr(settings, section, None)
        if not isinstance(sec, BaseModel):
            sections = sorted(k for k, v in Settings.model_fields.items() if isinstance(v.default, BaseModel))
            raise ConfigError(f"bad --set {item!r}: unknown section {section!r}; known: {sections}")
        if key not in type(sec).model_fields:
            raise ConfigError(
                f"bad --set {item!r}: {section} has no setting {key!r}; known: {sorted(type(sec).model_fields)}"
            )
        updates.setdefault(section, {})[key] = value
        env[f"RAG_{section.upper()}__{key.upper()}"] = value
    for section, vals in updates.items():
        sec = getattr(settings, section)
        data = sec.model_dump()
        data.update(vals)
        try:
            type(sec).model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ConfigError(
                f"bad --set for {section}.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
            ) from None
    return env


@dataclass(frozen=True)
class ShadowPlan:
    """What a shadow run starts.

    Attributes:
        run: run name.
        prefix: shadow topic prefix (``rag.eval.<run>.``).
        env: variables set for every worker (prefix, monitor identity, overrides).
        trace_table: the shadow monitor's trace table (``None`` without a monitor).
        workers: worker processes to start.
    """

    run: str
    prefix: str
    env: Mapping[str, str]
    trace_table: str | None
    workers: tuple[str, ...]


def plan_shadow(
    settings: Settings,
    run: str,
    overrides: Sequence[str] = (),
    *,
    prefix_template: str = "rag.eval.{run}.",
    monitor: bool = True,
) -> ShadowPlan:
    """Check the run and overrides and compute the workers' environment.

    Raises:
        ConfigError: bad run name or prefix, the shadow prefix equals the live one, or a bad override.
    """
    from workers.evaluation.replay_plan import shadow_prefix

    prefix = shadow_prefix(run, prefix_template)
    if prefix == settings.topics.prefix:
        raise ConfigError(f"the shadow prefix {prefix!r} is the live topic prefix; choose another run name")
    env = {
        "RAG_TOPICS__PREFIX": prefix,
        "RAG_WORKER__METRICS_PORT": "0",
    }
    gen = getattr(settings, "generator", None)
    if isinstance(gen, BaseModel) and "answer_table" in type(gen).model_fields:
        # The answer store is keyed by request id and replayed requests keep theirs: never share the live one.
        env["RAG_GENERATOR__ANSWER_TABLE"] = answer_table_name(run)
    table = trace_table_name(run) if monitor else None
    if monitor:
        assert table is not None
        if table == settings.monitor.table:
            raise ConfigError(f"the shadow trace table {table!r} is the live one; choose another run name")
        env.update(
            {
                "RAG_MONITOR__APP_ID": prefix + "monitor",
                "RAG_MONITOR__TABLE": table,
                "RAG_MONITOR__METRICS_PORT": "0",
                "RAG_MONITOR__WEB_PORT": "0",
            }
        )
    env.update(parse_overrides(overrides, settings))
    workers = WORKERS if monitor else WORKERS[:2]
    return ShadowPlan(run=run, prefix=prefix, env=env, trace_table=table, workers=workers)


def worker_env(base_env: Mapping[str, str], plan: ShadowPlan) -> dict[str, str]:
    """The environment of the shadow workers: ``base_env`` without group overrides, plus the plan's variables
    (:func:`workers.supervisor.process_env` then sets ``HF_HUB_OFFLINE`` per worker)."""
    env = {k: v for k, v in base_env.items() if k not in REMOVED_ENV}
    env.update(plan.env)
    return env


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
        import json

        for msg in self._consumer.consume(500, timeout=timeout_s):
            if msg.error() is not None:
                continue
            try:
                obj = json.loads(msg.value() or b"")
                rid, status = str(obj["request_id"]), str(obj.get("status", "ok"))
            except (ValueError, KeyError, TypeError):
                continue
            if rid not in self.ids:
                self.ids.add(rid)
                self.by_status[status] = self.by_status.get(status, 0) + 1
        return len(self.ids)

    def close(self) -> None:
        """Close the consumer (nothing to commit)."""
        self._consumer.close()


@dataclass
class ShadowResult:
    """How a shadow run ended.

    Attributes:
        run: run name.
        prefix: shadow topic prefix.
        trace_table: the shadow monitor's table (``None`` without a monitor).
        responses: distinct request ids answered on the shadow responses topic.
        by_status: those answers by status.
        reason: ``until_responses``, ``timeout`` or ``interrupted``.
        seconds: wall time (s).
        exit_codes: worker → exit code.
        log_dir: folder of the worker logs.
    """

    run: str
    prefix: str
    trace_table: str | None
    responses: int
    by_status: dict[str, int]
    reason: str
    seconds: float
    exit_codes: dict[str, int | None]
    log_dir: Path


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


def _trace_rows(database_url: str, table: str) -> int:
    """Answered rows of the shadow trace table (0 when it does not exist yet or the database is away)."""
    from workers.adapters.traces import answered_rows

    return answered_rows(database_url, table)


def run_shadow(
    settings: Settings,
    plan: ShadowPlan,
    base_env: Mapping[str, str],
    *,
    topics_file: Path,
    log_dir: Path,
    until_responses: int | None = None,
    timeout_s: float | None = None,
    ready_timeout_s: float = 300.0,
    monitor_catch_up_s: float = 60.0,
) -> ShadowResult:
    """Start the shadow pipeline and run it until told to stop.

    Args:
        settings: the live settings (Kafka, database, topic base names).
        plan: :func:`plan_shadow`.
        base_env: environment the workers inherit.
        topics_file: topics.yaml, applied under the shadow prefix.
        log_dir: worker log folder.
        until_responses: stop once this many distinct request ids are answered (``None``: no bound).
        timeout_s: stop after this many seconds (``None``: no bound).
        ready_timeout_s: seconds allowed for the workers to start (model loading included).
        monitor_catch_up_s: after ``until_responses`` is reached, seconds allowed for the shadow monitor to
            record the answers before the workers are stopped.

    Returns:
        A :class:`ShadowResult`.

    Raises:
        ShadowError: a worker exited or did not become ready.
        ConfigError: topics could not be created.
        ServiceUnavailableError: no broker answers.
    """
    t0 = time.monotonic()
    ensure_shadow_topics(settings, plan.prefix, topics_file)
    stop = _StopFlag()
    old_term = signal.signal(signal.SIGTERM, stop.set)
    pipeline = shadow_processes(plan, base_env, log_dir)
    counter: ResponseCounter | None = None
    reason = "interrupted"
    codes: dict[str, int | None] = {}
    try:
        pipeline.start()
        pipeline.wait_ready(ready_timeout_s, stop=stop)
        log.info("shadow run ready run=%s prefix=%s", plan.run, plan.prefix)
        counter = ResponseCounter(settings.kafka, plan.prefix + settings.topics.responses)
        last_logged = -1
        while not stop.is_set():
            n = counter.poll(0.5)
            if n != last_logged and (n - last_logged >= 10 or (until_responses is not None and n >= until_responses)):
                log.info("shadow responses run=%s answered=%d by_status=%s", plan.run, n, counter.by_status)
                last_logged = n
            if until_responses is not None and n >= until_responses:
                reason = "until_responses"
                break
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                reason = "timeout"
                break
            pipeline.check_alive()
        if reason == "until_responses" and plan.trace_table is not None and until_responses is not None:
            url = settings.database_url.get_secret_value()
            end = time.monotonic() + monitor_catch_up_s
            while _trace_rows(url, plan.trace_table) < until_responses and time.monotonic() < end:
                pipeline.check_alive()
                time.sleep(0.5)
    except KeyboardInterrupt:
        reason = "interrupted"
    finally:
        signal.signal(signal.SIGTERM, old_term)
        if counter is not None:
            counter.close()
        codes = {name.rsplit("-", 1)[0]: code for name, code in pipeline.stop().items()}
    return ShadowResult(
        run=plan.run,
        prefix=plan.prefix,
        trace_table=plan.trace_table,
        responses=len(counter.ids) if counter is not None else 0,
        by_status=dict(counter.by_status) if counter is not None else {},
        reason=reason,
        seconds=time.monotonic() - t0,
        exit_codes=codes,
        log_dir=log_dir,
    )
