"""The monitor's PostgreSQL sink: one trace row per request id, plus an errors table.

Tables (``table`` defaults to ``rag_traces``):

* ``<table>``: one row per request id. Each event kind writes only the columns it owns (see
  :mod:`workers.monitor.join`); ``status``, ``error_class``, ``error_message``, ``error_stage``,
  ``timings_ms`` and ``created_at`` are generated columns derived from them, so the row's content does not
  depend on the order in which events arrive. ``kafka_topic/partition/offset`` are those of the last event
  that changed the row; ``updated_at`` is the time of that change.
* ``<table>_errors``: dead letters and messages the monitor could not decode, one row per
  ``(source_topic, source_partition, source_offset, stage)``.

A batch is written in one transaction: the existing rows of the batch's request ids are locked
(``SELECT ... FOR UPDATE`` in id order), :func:`workers.monitor.join.resolve` keeps only the parts that
change them, and the rest is merged set-wise: the rows are ``COPY``-ed into a session-local staging table
(``TEMP ... ON COMMIT DELETE ROWS``) and moved with one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE``.
That is four round trips per batch whatever its size, instead of one statement execution per row (B5 in
BENCHMARKS.md measures the difference against ``executemany``). A redelivered event therefore writes nothing
and is reported as no change, which keeps the metrics from double-counting.

In a staged row, a kind whose part does not apply has all its owned columns NULL, its ``<kind>_sig``
included; the merge statement's guard therefore reads "this batch brings a part of this kind" as
``EXCLUDED.<kind>_sig IS NOT NULL`` (a part's sig is never NULL).

The recorder is synchronous (psycopg 3 ``ConnectionPool``); the faust app runs it in a worker thread.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from workers.adapters.postgres import first_line
from workers.contracts.errors import ConfigError, PermanentError, RetryableError
from workers.monitor.join import merge_updates, resolve
from workers.monitor.trace import (
    AT_COLUMN,
    JSON_COLUMNS,
    KINDS,
    OWNED_COLUMNS,
    SIG_COLUMN,
    STATE_COLUMNS,
    BatchResult,
    ErrorRecord,
    TraceUpdate,
)

logger = logging.getLogger(__name__)

#: Every column the event kinds own, in :data:`KINDS` order (the staging table's data columns).
_TRACE_DATA_COLUMNS: tuple[str, ...] = tuple(c for k in KINDS for c in OWNED_COLUMNS[k])

_TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,50}$")

_TRACE_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    request_id uuid PRIMARY KEY,
    request_sig text,
    request_created_at timestamptz,
    query text,
    top_k integer,
    filters jsonb,
    generation jsonb,
    deadline timestamptz,
    session_id text,
    reply_topic text,
    prompt_sig text,
    prompt_created_at timestamptz,
    passages jsonb,
    messages jsonb,
    template_id text,
    template_hash text,
    prompt_tokens integer,
    max_new_tokens integer,
    passages_dropped integer,
    query_tokens integer,
    query_truncated boolean,
    embedding_model text,
    prompt_timings_ms jsonb,
    response_sig text,
    response_created_at timestamptz,
    response_status text,
    answer text,
    finish_reason text,
    model_id text,
    model_revision text,
    usage_prompt_tokens integer,
    usage_completion_tokens integer,
    usage_total_tokens integer,
    sources jsonb,
    response_timings_ms jsonb,
    response_error_class text,
    response_error_message text,
    response_error_stage text,
    attempts integer,
    dl_sig text,
    dl_created_at timestamptz,
    dl_error_class text,
    dl_error_message text,
    dl_stage text,
    dl_source_topic text,
    dl_source_partition integer,
    dl_source_offset bigint,
    dl_attempts integer,
    status text GENERATED ALWAYS AS (
        CASE
            WHEN response_status = 'ok' THEN 'ok'
            WHEN dl_sig IS NOT NULL THEN 'dead_letter'
            WHEN response_status IS NOT NULL THEN response_status
            WHEN prompt_sig IS NOT NULL THEN 'prompted'
            WHEN request_sig IS NOT NULL THEN 'requested'
            ELSE 'unknown'
        END
    ) STORED,
    error_class text GENERATED ALWAYS AS (COALESCE(response_error_class, dl_error_class)) STORED,
    error_message text GENERATED ALWAYS AS (
        CASE WHEN response_error_class IS NOT NULL THEN response_error_message ELSE dl_error_message END
    ) STORED,
    error_stage text GENERATED ALWAYS AS (
        CASE WHEN response_error_class IS NOT NULL THEN response_error_stage ELSE dl_stage END
    ) STORED,
    timings_ms jsonb GENERATED ALWAYS AS (
        COALESCE(prompt_timings_ms, '{{}}'::jsonb) || COALESCE(response_timings_ms, '{{}}'::jsonb)
    ) STORED,
    created_at timestamptz GENERATED ALWAYS AS (
        LEAST(request_created_at, prompt_created_at, response_created_at, dl_created_at)
    ) STORED,
    updated_at timestamptz NOT NULL DEFAULT now(),
    kafka_topic text NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS {unanswered_idx} ON {table} (deadline) WHERE response_status IS NULL;
CREATE TABLE IF NOT EXISTS {errors} (
    source_topic text NOT NULL,
    source_partition integer NOT NULL,
    source_offset bigint NOT NULL,
    stage text NOT NULL,
    kind text NOT NULL,
    error_class text NOT NULL,
    error_message text NOT NULL,
    request_id uuid,
    seen_topic text NOT NULL,
    seen_partition integer NOT NULL,
    seen_offset bigint NOT NULL,
    value_b64 text,
    attempts integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_topic, source_partition, source_offset, stage)
);
CREATE INDEX IF NOT EXISTS {errors_rid_idx} ON {errors} (request_id) WHERE request_id IS NOT NULL;
"""

_ERROR_COLUMNS: tuple[str, ...] = (
    "source_topic",
    "source_partition",
    "source_offset",
    "stage",
    "kind",
    "error_class",
    "error_message",
    "request_id",
    "seen_topic",
    "seen_partition",
    "seen_offset",
    "value_b64",
    "attempts",
    "created_at",
)


def pg_safe(value: Any) -> Any:
    """``value`` with NUL characters replaced by U+FFFD in every string, nested ones included: PostgreSQL
    refuses NUL in ``text`` and ``jsonb`` (a fuzzed message must not block the monitor's batch)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {pg_safe(k): pg_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [pg_safe(v) for v in value]
    return value


#: A JSON ``\u0000`` escape that is not itself escaped (preceded by an even number of backslashes).
_JSON_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def pg_safe_json(value: Any) -> str:
    """``value`` as JSON text for a jsonb column, with NUL characters replaced by U+FFFD (as :func:`pg_safe`):
    ``json.dumps`` writes NUL as the escape ``\\u0000``, which jsonb refuses."""
    text = json.dumps(value, separators=(",", ":"))
    return _JSON_NUL.sub(r"\1\\ufffd", text) if "\\u0000" in text else text


class TraceRecorder:
    """Writes trace rows and error records to PostgreSQL.

    Args:
        pool: an open (or opening) psycopg 3 connection pool; the recorder never closes it.
        table: name of the trace table (letters, digits, ``_``); errors go to ``<table>_errors``.

    Raises:
        ConfigError: ``table`` is not a plain identifier.
    """

    def __init__(self, pool: ConnectionPool, table: str = "rag_traces") -> None:
        if not _TABLE_RE.match(table):
            raise ConfigError(f"invalid trace table name {table!r}: use letters, digits and '_' (max 51)")
        self._pool = pool
        self.table = table
        self.errors_table = f"{table}_errors"
        self._t = sql.Identifier(table)
        self._e = sql.Identifier(self.errors_table)
        self._stage = sql.Identifier(f"_stage_{table}")
        self._columns: list[str] = [
            "request_id",
            *_TRACE_DATA_COLUMNS,
            "kafka_topic",
            "kafka_partition",
            "kafka_offset",
        ]
        self._create_stage = self._build_create_stage()
        self._copy = sql.SQL("COPY {s} ({cols}) FROM STDIN").format(
            s=self._stage, cols=sql.SQL(", ").join(sql.Identifier(c) for c in self._columns)
        )
        self._merge = self._build_merge()
        self._insert_error = self._build_insert_error()

    # -- schema ---------------------------------------------------------------------------------------

    def ensure_schema(self) -> None:
        """Create both tables and their indexes if missing (idempotent, safe across replicas).

        Raises:
            psycopg.Error: the database refused (permissions, connection).
        """
        ddl = sql.SQL(_TRACE_DDL).format(
            table=self._t,
            errors=self._e,
            unanswered_idx=sql.Identifier(f"{self.table}_unanswered_idx"),
            errors_rid_idx=sql.Identifier(f"{self.errors_table}_rid_idx"),
        )
        with self._pool.connection() as conn, conn.transaction():
            # Serialise concurrent CREATE ... IF NOT EXISTS of several replicas (they can race on pg_type).
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
            conn.execute(ddl)
        logger.info("trace schema ready table=%s errors_table=%s", self.table, self.errors_table)

    # -- writes ---------------------------------------------------------------------------------------

    def write(self, updates: Sequence[TraceUpdate]) -> int:
        """Upsert trace updates in one transaction.

        Args:
            updates: updates in the order their events were read (merged by request id here).

        Returns:
            Number of trace rows inserted or changed (0 for a batch of redeliveries).

        Raises:
            RetryableError, PermanentError: as :meth:`write_batch`; nothing of the batch is stored.
        """
        return self.write_batch(updates, ()).rows_changed

    def write_errors(self, errors: Sequence[ErrorRecord]) -> int:
        """Insert error records in one transaction (already-stored keys are left as they are).

        Args:
            errors: dead letters and bad messages.

        Returns:
            Number of records that were new.

        Raises:
            RetryableError, PermanentError: as :meth:`write_batch`; nothing of the batch is stored.
        """
        return len(self.write_batch((), errors).errors_inserted)

    def write_batch(self, updates: Sequence[TraceUpdate], errors: Sequence[ErrorRecord]) -> BatchResult:
        """Write trace updates and error records of one batch in one transaction.

        Args:
            updates: trace updates in reading order (merged by request id here).
            errors: error records.

        Returns:
            The rows that changed and the error records that were new (for the metrics).

        Raises:
            RetryableError: the database is briefly unavailable (connection lost, no pooled connection in time);
                nothing is stored and the caller should retry the same batch.
            PermanentError: the database rejected the batch (a value it refuses); nothing is stored, retrying the
                same batch cannot help (write its events one by one to find the bad one).
        """
        try:
            return self._write_batch(updates, errors)
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
            raise RetryableError(f"trace write failed, database unavailable: {first_line(exc)}") from exc
        except psycopg.Error as exc:
            raise PermanentError(f"trace write rejected: {type(exc).__name__}: {first_line(exc)}") from exc

    def _write_batch(self, updates: Sequence[TraceUpdate], errors: Sequence[ErrorRecord]) -> BatchResult:
        merged = merge_updates(updates)
        result = BatchResult()
        if not merged and not errors:
            return result
        with self._pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            if merged:
                states = self._lock_states(cur, [u.request_id for u in merged])
                rows: list[tuple[Any, ...]] = []
                for upd in merged:
                    effective, change = resolve(states.get(upd.request_id), upd)
                    if effective is not None:
                        rows.append(self._row(effective))
                        result.changes.append(change)
                if rows:
                    self._merge_rows(cur, rows)
            if errors:
                unique: dict[tuple[str, int, int, str], ErrorRecord] = {}
                for rec in errors:
                    unique.setdefault((rec.source_topic, rec.source_partition, rec.source_offset, rec.stage), rec)
                recs = list(unique.values())
                cur.executemany(self._insert_error, [self._error_row(r) for r in recs], returning=True)
                for rec in recs:
                    if cur.fetchone() is not None:
                        result.errors_inserted.append(rec)
                    if not cur.nextset():
                        break
        return result

    def _lock_states(self, cur: Any, ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
        query = sql.SQL(
            "SELECT request_id, {cols} FROM {t} WHERE request_id = ANY(%s) ORDER BY request_id FOR UPDATE"
        ).format(cols=sql.SQL(", ").join(sql.Identifier(c) for c in STATE_COLUMNS), t=self._t)
        cur.execute(query, (sorted(ids),))
        return {row["request_id"]: row for row in cur.fetchall()}

    def _merge_rows(self, cur: Any, rows: Sequence[tuple[Any, ...]]) -> None:
        """COPY ``rows`` (tuples in ``self._columns`` order) into the staging table and merge them in one
        statement; call inside the batch's transaction (the staging rows vanish at its commit or rollback)."""
        cur.execute(self._create_stage)
        with cur.copy(self._copy) as copy:
            for row in rows:
                copy.write_row(row)
        cur.execute(self._merge)

    def _build_create_stage(self) -> sql.Composed:
        # Same column types as the trace table (CREATE ... AS ... WITH NO DATA copies them, generated columns
        # are not selected); one per session and table, emptied at every commit.
        return sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS {s} ON COMMIT DELETE ROWS AS SELECT {cols} FROM {t} WITH NO DATA"
        ).format(s=self._stage, t=self._t, cols=sql.SQL(", ").join(sql.Identifier(c) for c in self._columns))

    def _build_merge(self) -> sql.Composed:
        sets: list[sql.Composable] = []
        for kind in KINDS:
            sig, at = SIG_COLUMN[kind], AT_COLUMN[kind]
            # Python decided (resolve); the version guard repeats the check in SQL for the race where another
            # replica inserted the row after our SELECT ... FOR UPDATE found none.
            guard = sql.SQL(
                "(EXCLUDED.{sig} IS NOT NULL AND ({t}.{sig} IS NULL"
                " OR (EXCLUDED.{at}, EXCLUDED.{sig}) > ({t}.{at}, {t}.{sig})))"
            ).format(t=self._t, sig=sql.Identifier(sig), at=sql.Identifier(at))
            for col in OWNED_COLUMNS[kind]:
                sets.append(
                    sql.SQL("{c} = CASE WHEN {guard} THEN EXCLUDED.{c} ELSE {t}.{c} END").format(
                        c=sql.Identifier(col), guard=guard, t=self._t
                    )
                )
        for col in ("kafka_topic", "kafka_partition", "kafka_offset"):
            sets.append(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(col)))
        sets.append(sql.SQL("updated_at = now()"))
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in self._columns)
        # ORDER BY: rows are inserted/locked in id order, as _lock_states locks them (no deadlock between replicas).
        return sql.SQL(
            "INSERT INTO {t} ({cols}) SELECT {cols} FROM {s} ORDER BY request_id "
            "ON CONFLICT (request_id) DO UPDATE SET {sets}"
        ).format(t=self._t, s=self._stage, cols=cols, sets=sql.SQL(", ").join(sets))

    def _build_insert_error(self) -> sql.Composed:
        return sql.SQL(
            "INSERT INTO {e} ({cols}) VALUES ({vals}) "
            "ON CONFLICT (source_topic, source_partition, source_offset, stage) DO NOTHING RETURNING 1"
        ).format(
            e=self._e,
            cols=sql.SQL(", ").join(sql.Identifier(c) for c in _ERROR_COLUMNS),
            vals=sql.SQL(", ").join(sql.Placeholder(c) for c in _ERROR_COLUMNS),
        )

    @staticmethod
    def _row(update: TraceUpdate) -> tuple[Any, ...]:
        """The staging row of an (already resolved) update: ``request_id``, every kind's owned columns (NULL
        for a kind the update does not carry), the last event's coordinates; strings made NUL-safe.

        jsonb columns are dumped to JSON text here, once, and made NUL-safe on that text
        (:func:`pg_safe_json`), which is much cheaper than walking the nested values.
        """
        row: list[Any] = [update.request_id]
        for kind in KINDS:
            part = update.parts.get(kind)
            values = part.columns() if part is not None else {}
            for col in OWNED_COLUMNS[kind]:
                value = values.get(col)
                if value is None:
                    row.append(None)
                elif col in JSON_COLUMNS:
                    row.append(pg_safe_json(value))
                else:
                    row.append(pg_safe(value))
        row.extend((update.last.topic, update.last.partition, update.last.offset))
        return tuple(row)

    @staticmethod
    def _error_row(rec: ErrorRecord) -> dict[str, Any]:
        return {k: pg_safe(v) for k, v in TraceRecorder._error_fields(rec).items()}

    @staticmethod
    def _error_fields(rec: ErrorRecord) -> dict[str, Any]:
        return {
            "source_topic": rec.source_topic,
            "source_partition": rec.source_partition,
            "source_offset": rec.source_offset,
            "stage": rec.stage,
            "kind": rec.kind,
            "error_class": rec.error_class,
            "error_message": rec.error_message,
            "request_id": rec.request_id,
            "seen_topic": rec.seen.topic,
            "seen_partition": rec.seen.partition,
            "seen_offset": rec.seen.offset,
            "value_b64": rec.value_b64,
            "attempts": rec.attempts,
            "created_at": rec.created_at,
        }

    # -- reads ----------------------------------------------------------------------------------------

    def count(self) -> int:
        """Number of trace rows.

        Raises:
            psycopg.Error: the query failed.
        """
        with self._pool.connection() as conn:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {t}").format(t=self._t)).fetchone()
        return int(row[0]) if row else 0

    def get(self, request_id: uuid.UUID | str) -> dict[str, Any] | None:
        """The trace row of one request id as a column → value dict, or ``None``.

        Raises:
            psycopg.Error: the query failed.
            ValueError: ``request_id`` is not a UUID.
        """
        rid = request_id if isinstance(request_id, uuid.UUID) else uuid.UUID(str(request_id))
        with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(sql.SQL("SELECT * FROM {t} WHERE request_id = %s").format(t=self._t), (rid,))
            return cur.fetchone()

    def errors(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Rows of the errors table, oldest recorded first.

        Args:
            limit: most rows returned.

        Raises:
            psycopg.Error: the query failed.
        """
        with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                sql.SQL(
                    "SELECT * FROM {e} ORDER BY recorded_at, source_topic, source_partition, source_offset LIMIT %s"
                ).format(e=self._e),
                (limit,),
            )
            return cur.fetchall()

    def count_errors(self) -> int:
        """Number of rows of the errors table.

        Raises:
            psycopg.Error: the query failed.
        """
        with self._pool.connection() as conn:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {e}").format(e=self._e)).fetchone()
        return int(row[0]) if row else 0

    def unanswered(self, now: datetime) -> tuple[int, int]:
        """Requests seen without a response yet, and how many of them are past their deadline.

        Args:
            now: the current time (UTC).

        Returns:
            ``(in_flight, past_deadline)``; rows ended by a dead letter are not in flight.

        Raises:
            psycopg.Error: the query failed.
        """
        query = sql.SQL(
            "SELECT count(*), count(*) FILTER (WHERE deadline < %s) FROM {t} "
            "WHERE response_status IS NULL AND request_sig IS NOT NULL AND dl_sig IS NULL"
        ).format(t=self._t)
        with self._pool.connection() as conn:
            row = conn.execute(query, (now,)).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def drop(self) -> None:
        """Drop the trace and errors tables (tests and evaluation clean-up).

        Raises:
            psycopg.Error: the statement failed.
        """
        with self._pool.connection() as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {t}, {e}").format(t=self._t, e=self._e))


def answered_rows(database_url: str, table: str) -> int:
    """Trace rows with a response in ``table`` over a one-off connection (0 when the table does not exist yet or the
    database cannot be reached): how far a monitor has recorded a run."""
    from workers.adapters.postgres import connect

    try:
        with connect(database_url, timeout_s=5) as conn:
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {t} WHERE response_status IS NOT NULL").format(t=sql.Identifier(table))
            ).fetchone()
    except psycopg.Error:
        return 0
    return int(row[0]) if row else 0
