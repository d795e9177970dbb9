"""The generator's answer store: finished Responses by request id, so a redelivered prompt is not generated again.

Why PostgreSQL (DESIGN.md §5, effectively-once): a prompt can be redelivered after its answer was produced
(crash between produce and commit, rebalance, replay into the live topics). Before calling the LLM the
generator looks the request id up here; when a finished answer exists it re-emits it instead of spending GPU
time. The store must survive a generator crash and be shared by all replicas (a redelivered prompt may land on
another replica), so in-process memory is out. A compacted Kafka topic would work too, but every replica would
have to read the whole topic (all partitions) into memory or a local state store before answering, and rebuild
it after each restart; a primary-key lookup in the PostgreSQL that the stack already runs is one indexed read
(well under a millisecond here) and needs no warm-up. Rows are small (the Response JSON) and can be expired by
age (``delete_older_than``).

Only final answers are stored (:data:`~workers.contracts.messages.FINAL_STATUSES`: ``ok``, permanent ``error``,
``expired``, ``rejected`` and ``no_context``). A ``model_unavailable`` answer is not stored, so a later redelivery
(e.g. a replay once the server is back) tries again.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from psycopg import errors as pg_errors
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from workers.contracts.errors import RetryableError
from workers.contracts.messages import FINAL_STATUSES, Response
from workers.contracts.serde import encode

log = logging.getLogger(__name__)


class PgAnswerStore:
    """:class:`~workers.adapters.interfaces.AnswerStore` in a PostgreSQL table
    ``(request_id uuid primary key, status, response jsonb)``.

    Args:
        pool: an open psycopg ``AsyncConnectionPool``.
        table: table name (created by :meth:`ensure_schema`).

    Raises (from every method):
        RetryableError: the database could not be reached or the statement failed transiently.
    """

    def __init__(self, pool: AsyncConnectionPool, table: str = "rag_answers") -> None:
        self.pool = pool
        self.table = table

    async def ensure_schema(self) -> None:
        """Create the table if missing (idempotent)."""
        q = sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (request_id uuid PRIMARY KEY, status text NOT NULL, "
            "response jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
        ).format(sql.Identifier(self.table))
        try:
            async with self.pool.connection() as conn:
                await conn.execute(q)
        except pg_errors.UniqueViolation:  # two replicas creating it at once
            pass
        except Exception as exc:
            raise RetryableError(f"answer store: cannot create table {self.table}: {exc}") from exc

    async def get(self, request_id: uuid.UUID) -> Response | None:
        """The stored Response for ``request_id``, or ``None`` (one primary-key read)."""
        q = sql.SQL("SELECT response::text FROM {} WHERE request_id = %s").format(sql.Identifier(self.table))
        try:
            async with self.pool.connection() as conn:
                cur = await conn.execute(q, (request_id,))
                row = await cur.fetchone()
        except Exception as exc:
            raise RetryableError(f"answer store read failed: {exc}") from exc
        return Response.model_validate_json(row[0]) if row else None

    async def put(self, response: Response) -> bool:
        """Store a final Response; the first write for a request id wins. Non-final statuses are ignored."""
        if response.status not in FINAL_STATUSES:
            return False
        q = sql.SQL(
            "INSERT INTO {} (request_id, status, response) VALUES (%s, %s, %s::jsonb) ON CONFLICT DO NOTHING"
        ).format(sql.Identifier(self.table))
        try:
            async with self.pool.connection() as conn:
                # jsonb refuses the \u0000 escape; an answer may carry it (from the query or the model)
                doc = encode(response).decode().replace("\\u0000", "\\ufffd")
                cur = await conn.execute(q, (response.request_id, response.status, doc))
                return bool(cur.rowcount)
        except Exception as exc:
            raise RetryableError(f"answer store write failed: {exc}") from exc

    async def delete_older_than(self, age: timedelta) -> int:
        """Expire answers older than ``age``; returns rows deleted."""
        q = sql.SQL("DELETE FROM {} WHERE created_at < now() - %s").format(sql.Identifier(self.table))
        async with self.pool.connection() as conn:
            cur = await conn.execute(q, (age,))
            return int(cur.rowcount)
