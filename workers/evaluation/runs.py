"""The runs ``ragstream evaluate`` compares: where they are read from and what is read.

A *run* is a set of answers to requests, read from one of these sources (:func:`parse_source`):

* ``live``: the live topics (``RAG_TOPICS__PREFIX`` + ``rag.requests`` / ``rag.responses``);
* ``run:NAME``: the topics of a shadow run, ``rag.eval.NAME.rag.requests`` / ``rag.eval.NAME.rag.responses``
  (``ragstream replay --run NAME`` + ``ragstream shadow --run NAME``);
* ``topics:PREFIX``: the topics under any prefix;
* ``table:NAME``: a monitor trace table in PostgreSQL (``RAG_DATABASE_URL``). The trace table does not hold
  provenance, so the report shows none for such a run.

Topics are read without a consumer group (:func:`workers.kafka.reader.read_topic`: partitions *assigned* from
the low to the high watermark captured at the start, nothing committed), so evaluating never moves a live
group's offsets; the trace table is read over one connection from :func:`workers.adapters.postgres.connect`.

Replayed requests keep their original ``created_at``; stages timed from it (``retriever_queue_ms``,
``end_to_end_ms``) are therefore re-based, for requests that carry the ``replay_run`` header, to the time
the replayed record was written to the shadow requests topic (its Kafka timestamp).

This module also holds the in-memory form of a run (:class:`RunData` of :class:`Answer`), the labelled
questions file (:func:`load_labels`) and the evaluation set (:func:`evaluation_ids`).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.contracts.errors import ConfigError, MessageError
from workers.contracts.messages import Provenance, Request, Response
from workers.contracts.serde import decode
from workers.kafka.reader import TopicRecord, read_topic
from workers.settings import Settings

log = logging.getLogger(__name__)

#: Stages timed from ``Request.created_at``: re-based for replayed requests (see the module docstring).
REBASED_STAGES = ("retriever_queue_ms", "end_to_end_ms")
#: Stages that include time spent waiting in a topic: how a replay delivered its requests (a burst, before
#: the shadow workers were up) shows in them, so they are not comparable between a replayed and a live run.
QUEUE_STAGES = ("retriever_queue_ms", "generator_queue_ms", "end_to_end_ms")
#: Derived stage: end to end minus the queue waits, i.e. the time the stages worked on the request (ms).
PROCESSING_STAGE = "processing_ms"

_TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SourceRef:
    """A retrieved passage an answer was generated from (rank = position in ``sources``, 0 = best)."""

    document_id: str
    chunk_id: str
    score: float = 0.0
    cited: bool = False


@dataclass(frozen=True)
class Answer:
    """One run's answer to one request id, in the form the metrics need.

    Attributes:
        request_id: the request id.
        status: ``ok``, ``error``, ``expired``, ``model_unavailable``, ``rejected``, ``no_context`` or
            ``dead_letter``.
        answer: the answer text (``None`` unless ``ok``).
        sources: retrieved passages in rank order.
        timings_ms: per-stage times (ms), re-based for replayed requests.
        prompt_tokens: prompt tokens of the LLM tokenizer.
        completion_tokens: generated tokens.
        error_class: error class when the request failed.
        provenance: what produced the answer (``None`` when the source does not record it).
        groundedness: share of the answer's content words in the passages it cites (``None``: not reported).
    """

    request_id: uuid.UUID
    status: str
    answer: str | None = None
    sources: tuple[SourceRef, ...] = ()
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error_class: str | None = None
    provenance: Provenance | None = None
    groundedness: float | None = None


@dataclass
class RunData:
    """The requests and answers of one run.

    Attributes:
        label: ``baseline`` or ``candidate``.
        source: where they were read (``topics:rag.eval.r1.``, ``table:rag_traces``).
        queries: request id → query text of the requests seen (empty when the source has no requests).
        answers: request id → first answer seen.
        duplicates: answers seen again for an already answered request id (redeliveries).
        undecodable: records that were not valid messages (skipped).
        replayed: request ids whose request record was a replayed one (header ``replay_run``).
    """

    label: str
    source: str
    queries: dict[uuid.UUID, str] = field(default_factory=dict)
    answers: dict[uuid.UUID, Answer] = field(default_factory=dict)
    replayed: set[uuid.UUID] = field(default_factory=set)
    duplicates: int = 0
    undecodable: int = 0


@dataclass(frozen=True)
class RunSource:
    """Where a run is read from: topics under a prefix (``kind="topics"``) or a trace table (``"table"``).

    Attributes:
        kind: ``topics`` or ``table``.
        name: the topic prefix or the table name.
        label: how the report names it (``live``, ``run:k3``); default ``kind:name``.
    """

    kind: str
    name: str
    label: str = field(default="", compare=False)

    def __str__(self) -> str:
        return self.label or f"{self.kind}:{self.name}"


def parse_source(spec: str, live_prefix: str = "", shadow_template: str = "rag.eval.{run}.") -> RunSource:
    """Parse a run source: ``live``, ``run:NAME``, ``topics:PREFIX`` or ``table:NAME``.

    Args:
        spec: the user's spec.
        live_prefix: the live topic prefix (``RAG_TOPICS__PREFIX``), used for ``live``.
        shadow_template: shadow prefix template of ``run:NAME`` (``{run}`` is replaced).

    Raises:
        ConfigError: an unknown form, or a bad run or table name.
    """
    s = spec.strip()
    if s == "live":
        return RunSource("topics", live_prefix, "live")
    kind, sep, name = s.partition(":")
    if not sep:
        raise ConfigError(f"bad run source {spec!r}: use live, run:NAME, topics:PREFIX or table:NAME")
    if kind == "run":
        if not name or not re.match(r"^[A-Za-z0-9._-]+$", name):
            raise ConfigError(f"bad run name {name!r}: use letters, digits, '.', '_' and '-'")
        return RunSource("topics", shadow_template.replace("{run}", name), f"run:{name}")
    if kind == "topics":
        if name and not re.match(r"^[A-Za-z0-9._-]+$", name):
            raise ConfigError(f"bad topic prefix {name!r}")
        return RunSource("topics", name, "live" if name == live_prefix else "")
    if kind == "table":
        if not _TABLE_RE.match(name):
            raise ConfigError(f"bad trace table name {name!r}: use letters, digits and '_'")
        return RunSource("table", name)
    raise ConfigError(f"bad run source {spec!r}: use live, run:NAME, topics:PREFIX or table:NAME")


def load_labels(path: Path) -> dict[str, frozenset[str]]:
    """Read a labelled questions file: one JSON object per line, ``{"q": ..., "topics": [...]}``.

    Returns:
        normalized query text (:func:`normalize_query`) → the document ids whose text answers it.

    Raises:
        ConfigError: the file cannot be read or a line is not such an object.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read labels file {path}: {exc}") from exc
    out: dict[str, frozenset[str]] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            q, topics = obj["q"], obj["topics"]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f'{path}:{n}: expected {{"q": ..., "topics": [...]}}') from None
        if not isinstance(q, str) or not isinstance(topics, list):
            raise ConfigError(f"{path}:{n}: 'q' must be a string and 'topics' a list")
        out[normalize_query(q)] = frozenset(str(t) for t in topics)
    return out


def normalize_query(text: str) -> str:
    """Query text as matched against labels: whitespace collapsed, case folded."""
    return " ".join(text.split()).casefold()


def evaluation_ids(base: RunData, cand: RunData) -> list[uuid.UUID]:
    """The requests compared: the candidate's requests (else its answers), in a stable order.

    Order: the baseline's query order is not known, so ids are sorted by query text, then id.
    """
    ids = set(cand.queries) or set(cand.answers)
    queries = {**base.queries, **cand.queries}
    return sorted(ids, key=lambda r: (queries.get(r, ""), str(r)))


def with_processing(timings_ms: Mapping[str, float]) -> dict[str, float]:
    """``timings_ms`` plus :data:`PROCESSING_STAGE`: end to end minus the queue waits (ms, at least 0).

    Computed from the times as the pipeline wrote them (before any re-basing), so it is the same for a
    replayed request however long it waited; absent when the answer has no ``end_to_end_ms``.
    """
    out = dict(timings_ms)
    e2e = out.get("end_to_end_ms")
    if e2e is not None and PROCESSING_STAGE not in out:
        waits = sum(float(out.get(k, 0.0)) for k in QUEUE_STAGES if k != "end_to_end_ms")
        out[PROCESSING_STAGE] = max(0.0, float(e2e) - waits)
    return out


def rebase_timings(timings_ms: Mapping[str, float], shift_ms: float) -> dict[str, float]:
    """Subtract ``shift_ms`` from the stages timed from ``Request.created_at`` (clamped at 0 ms).

    Args:
        timings_ms: per-stage times (ms).
        shift_ms: time between the request's ``created_at`` and its entry into this run's requests topic (ms).
    """
    out = dict(timings_ms)
    if shift_ms > 0:
        for k in REBASED_STAGES:
            if k in out:
                out[k] = max(0.0, out[k] - shift_ms)
    return out


# --------------------------------------------------------------------------- reading runs


def run_from_records(
    label: str, source: str, requests: Iterable[TopicRecord], responses: Iterable[TopicRecord]
) -> RunData:
    """Build a run from the records of its requests and responses topics (pure; see :func:`read_topic`).

    Replayed requests (header ``replay_run``) get their ``created_at``-based stages re-based to the Kafka
    timestamp of the replayed record.
    """
    run = RunData(label=label, source=source)
    shift: dict[uuid.UUID, float] = {}
    for rec in requests:
        try:
            req = decode(rec.value, Request)
        except MessageError:
            run.undecodable += 1
            continue
        run.queries.setdefault(req.request_id, req.query)
        if rec.headers.get("replay_run"):
            run.replayed.add(req.request_id)
            if rec.timestamp_ms is not None:
                shift[req.request_id] = rec.timestamp_ms - req.created_at.timestamp() * 1000.0
    for rec in responses:
        try:
            resp = decode(rec.value, Response)
        except MessageError:
            run.undecodable += 1
            continue
        if resp.request_id in run.answers:
            run.duplicates += 1
            continue
        run.answers[resp.request_id] = answer_from_response(resp, shift.get(resp.request_id, 0.0))
    return run


def answer_from_response(resp: Response, shift_ms: float = 0.0) -> Answer:
    """An :class:`Answer` from a wire Response (timings re-based by ``shift_ms``, see :func:`rebase_timings`)."""
    return Answer(
        request_id=resp.request_id,
        status=resp.status,
        answer=resp.answer,
        sources=tuple(SourceRef(s.document_id, s.chunk_id, s.score, s.cited) for s in resp.sources),
        timings_ms=rebase_timings(with_processing(resp.timings_ms), shift_ms),
        prompt_tokens=resp.usage.prompt_tokens,
        completion_tokens=resp.usage.completion_tokens,
        error_class=resp.error.error_class if resp.error is not None else None,
        provenance=resp.provenance,
        groundedness=resp.groundedness,
    )


def answer_from_trace_row(row: Mapping[str, Any]) -> Answer | None:
    """An :class:`Answer` from a monitor trace row (``None`` when the request has no answer yet)."""
    status = row.get("response_status")
    if status is None:
        if row.get("status") != "dead_letter":
            return None
        status = "dead_letter"
    sources = tuple(
        SourceRef(str(s.get("document_id", "")), str(s.get("chunk_id", "")), float(s.get("score") or 0.0))
        for s in (row.get("sources") or [])
        if isinstance(s, Mapping)
    )
    rid = row["request_id"]
    return Answer(
        request_id=rid if isinstance(rid, uuid.UUID) else uuid.UUID(str(rid)),
        status=str(status),
        answer=row.get("answer"),
        sources=sources,
        timings_ms=with_processing(
            {k: float(v) for k, v in (row.get("timings_ms") or {}).items() if isinstance(v, int | float)}
        ),
        prompt_tokens=int(row.get("usage_prompt_tokens") or 0),
        completion_tokens=int(row.get("usage_completion_tokens") or 0),
        error_class=row.get("error_class"),
        provenance=None,
    )


def read_trace_table(database_url: str, table: str, label: str, ids: Iterable[uuid.UUID] | None = None) -> RunData:
    """A run from a monitor trace table (one row per request id).

    Args:
        database_url: PostgreSQL URL.
        table: the trace table (``rag_traces``, ``rag_traces_eval_<run>``).
        label: ``baseline`` or ``candidate``.
        ids: only these request ids (``None`` = every row).

    Raises:
        ConfigError: bad table name, or the table does not exist.
        ServiceUnavailableError: the database cannot be reached.
    """
    import psycopg
    from psycopg import sql
    from psycopg.rows import dict_row

    from workers.adapters.postgres import connect, first_line
    from workers.contracts.errors import ServiceUnavailableError

    if not _TABLE_RE.match(table):
        raise ConfigError(f"bad trace table name {table!r}")
    cols = (
        "request_id, query, status, response_status, answer, sources, timings_ms, usage_prompt_tokens, "
        "usage_completion_tokens, error_class"
    )
    query = sql.SQL("SELECT " + cols + " FROM {t}").format(t=sql.Identifier(table))
    params: tuple[Any, ...] = ()
    if ids is not None:
        query = query + sql.SQL(" WHERE request_id = ANY(%s)")
        params = (list(ids),)
    run = RunData(label=label, source=f"table:{table}")
    try:
        with connect(database_url, timeout_s=10) as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query, params)
            rows = cur.fetchall()
    except psycopg.errors.UndefinedTable:
        raise ConfigError(f"trace table {table!r} does not exist") from None
    except psycopg.OperationalError as exc:
        raise ServiceUnavailableError(f"PostgreSQL not reachable: {first_line(exc)}") from None
    for row in rows:
        rid = row["request_id"]
        if row.get("query") is not None:
            run.queries[rid] = row["query"]
        a = answer_from_trace_row(row)
        if a is not None:
            run.answers[rid] = a
    log.info("read trace table=%s rows=%d answers=%d", table, len(rows), len(run.answers))
    return run


def load_run(
    settings: Settings,
    source: RunSource,
    label: str,
    *,
    ids: Iterable[uuid.UUID] | None = None,
    timeout_s: float = 120.0,
) -> RunData:
    """Read one run from topics (requests + responses under the prefix) or from a trace table.

    Args:
        settings: Kafka and database settings; topic base names.
        source: where (:func:`parse_source`).
        label: ``baseline`` or ``candidate``.
        ids: keep only these request ids (``None`` = all).
        timeout_s: seconds allowed to read each topic.

    Raises:
        ConfigError: a topic or the table does not exist.
        ServiceUnavailableError: the broker or the database cannot be reached.
    """
    if source.kind == "table":
        return read_trace_table(settings.database_url.get_secret_value(), source.name, label, ids)
    from workers.kafka.admin import check_broker

    check_broker(settings.kafka)
    topics = settings.topics.model_copy(update={"prefix": source.name})
    reqs = read_topic(settings.kafka, topics.name("requests"), timeout_s=timeout_s)
    resps = read_topic(settings.kafka, topics.name("responses"), timeout_s=timeout_s)
    run = run_from_records(label, str(source), reqs, resps)
    if ids is not None:
        keep = set(ids)
        run.queries = {k: v for k, v in run.queries.items() if k in keep}
        run.answers = {k: v for k, v in run.answers.items() if k in keep}
        run.replayed &= keep
    return run
