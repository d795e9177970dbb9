"""The shadow runs on a cluster: ``ragstream runs list`` and ``ragstream runs delete NAME``.

A run ``NAME`` is everything ``replay`` and ``shadow`` made for it:

* topics ``rag.eval.NAME.*`` (requests, prompts, responses, dead letters and the run log;
  :mod:`workers.evaluation.runlog`), deleted through :mod:`workers.kafka.admin`;
* consumer groups ``rag.eval.NAME.*`` (retriever, generator, monitor);
* tables ``rag_traces_eval_NAME``, ``rag_traces_eval_NAME_errors`` (the shadow monitor's) and
  ``rag_answers_eval_NAME`` (the shadow generator's answer store), dropped through
  :mod:`workers.adapters.postgres`.

Runs are found by their topics (the default prefix ``rag.eval.{run}.``); tables of the evaluation naming that
belong to no listed run are reported apart. Live topics, groups and tables are never touched: a run's prefix
that would cover the live topic prefix is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from workers.contracts.errors import ConfigError
from workers.evaluation import runlog
from workers.evaluation.replay_plan import DEFAULT_PREFIX, shadow_prefix
from workers.evaluation.shadow_plan import answer_table_name, trace_table_name
from workers.settings import Settings

log = logging.getLogger(__name__)

#: What every run's topic names start with (the default shadow prefix up to the run name).
RUNS_PREFIX = DEFAULT_PREFIX.split("{run}")[0]
#: Table name prefixes of the evaluation's tables.
TABLE_PREFIXES = ("rag_traces_eval_", "rag_answers_eval_")


def run_tables(run: str) -> list[str]:
    """The tables of a run: trace table, its errors table, the answer store."""
    trace = trace_table_name(run)
    return [trace, f"{trace}_errors", answer_table_name(run)]


def run_of_topic(topic: str, bases: tuple[str, ...]) -> str | None:
    """The run name of a topic ``rag.eval.<run>.<base>``, ``None`` when it is not a run's topic.

    Args:
        topic: a topic name.
        bases: the base names of a run's topics (``rag.requests``, ..., ``rag.run-log``).
    """
    if not topic.startswith(RUNS_PREFIX):
        return None
    rest = topic[len(RUNS_PREFIX) :]
    for base in bases:
        if rest.endswith("." + base) and len(rest) > len(base) + 1:
            return rest[: -len(base) - 1]
    return None


@dataclass
class RunInfo:
    """One run as ``runs list`` shows it.

    Attributes:
        name: run name.
        created: the first entry of its run log (``None`` without one).
        requests: records in its requests topic.
        answers: records in its responses topic.
        topics: its topics.
        topic_records: records in all its topics.
        tables: its tables with their sizes (bytes).
        settings: the ``--set`` overrides of the last shadow that answered it.
    """

    name: str
    created: datetime | None = None
    requests: int = 0
    answers: int = 0
    topics: list[str] = field(default_factory=list)
    topic_records: int = 0
    tables: dict[str, int] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def table_bytes(self) -> int:
        """Bytes of its tables."""
        return sum(self.tables.values())


def _bases(settings: Settings) -> tuple[str, ...]:
    t = settings.topics
    return (t.requests, t.prompts, t.responses, t.dead_letter, runlog.RUN_LOG)


def list_runs(settings: Settings) -> tuple[list[RunInfo], list[str]]:
    """Every run on the cluster, by name, and the evaluation tables that belong to none of them.

    Raises:
        ServiceUnavailableError: the broker or the database cannot be reached.
    """
    from workers.adapters.postgres import table_sizes
    from workers.kafka.admin import record_counts, topic_partitions

    bases = _bases(settings)
    runs: dict[str, RunInfo] = {}
    for topic in sorted(topic_partitions(settings.kafka)):
        name = run_of_topic(topic, bases)
        if name is not None:
            runs.setdefault(name, RunInfo(name)).topics.append(topic)
    counts = record_counts(settings.kafka, [t for r in runs.values() for t in r.topics])
    tables = table_sizes(settings.database_url.get_secret_value(), TABLE_PREFIXES)
    claimed: set[str] = set()
    for info in runs.values():
        prefix = RUNS_PREFIX + info.name + "."
        info.requests = counts.get(prefix + settings.topics.requests, 0)
        info.answers = counts.get(prefix + settings.topics.responses, 0)
        info.topic_records = sum(counts.get(t, 0) for t in info.topics)
        info.tables = {t: tables[t] for t in run_tables(info.name) if t in tables}
        claimed.update(info.tables)
        entries = runlog.read(settings.kafka, prefix) if prefix + runlog.RUN_LOG in info.topics else []
        info.created = entries[0].at if entries else None
        shadow = runlog.last_shadow(entries)
        info.settings = dict(shadow.overrides) if shadow is not None else {}
    return sorted(runs.values(), key=lambda r: r.name), sorted(set(tables) - claimed)


@dataclass
class RunParts:
    """What ``runs delete`` removes.

    Attributes:
        name: run name.
        prefix: its topic prefix.
        topics: its topics.
        groups: its consumer groups.
        tables: its tables that exist.
    """

    name: str
    prefix: str
    topics: list[str]
    groups: list[str]
    tables: list[str]

    @property
    def empty(self) -> bool:
        """Nothing of the run exists."""
        return not (self.topics or self.groups or self.tables)


def run_parts(settings: Settings, name: str) -> RunParts:
    """The topics, groups and tables of one run.

    Raises:
        ConfigError: a bad run name, or a run prefix that would cover the live topics.
        ServiceUnavailableError: the broker or the database cannot be reached.
    """
    from workers.adapters.postgres import table_sizes
    from workers.kafka.admin import consumer_groups, topic_partitions

    prefix = shadow_prefix(name)
    if settings.topics.prefix.startswith(prefix):
        raise ConfigError(f"run {name!r} has the live topic prefix {settings.topics.prefix!r}; refusing to delete it")
    topics = sorted(t for t in topic_partitions(settings.kafka) if t.startswith(prefix))
    groups = consumer_groups(settings.kafka, prefix)
    existing = table_sizes(settings.database_url.get_secret_value(), run_tables(name))
    tables = [t for t in run_tables(name) if t in existing]
    return RunParts(name=name, prefix=prefix, topics=topics, groups=groups, tables=tables)


def delete_run(settings: Settings, parts: RunParts) -> RunParts:
    """Delete a run's consumer groups, topics and tables (:func:`run_parts`); returns what was deleted.

    Raises:
        ConfigError: the broker refused (e.g. a shadow of the run is still running: its groups have members).
        ServiceUnavailableError: the broker or the database cannot be reached.
    """
    from workers.adapters.postgres import drop_tables
    from workers.kafka.admin import delete_consumer_groups, delete_topics

    groups = delete_consumer_groups(settings.kafka, parts.groups)
    topics = delete_topics(settings.kafka, parts.topics)
    tables = drop_tables(settings.database_url.get_secret_value(), parts.tables)
    log.info("deleted run=%s topics=%d groups=%d tables=%d", parts.name, len(topics), len(groups), len(tables))
    return RunParts(name=parts.name, prefix=parts.prefix, topics=topics, groups=groups, tables=tables)
