"""PostgreSQL connections for every part that uses the database: pools (sync and async) and one-off connections.

One place opens them (the retriever's vector store, the generator's answer store, the monitor's trace table,
the evaluation tools), each failing fast with a one-line error that names ``host:port/dbname`` but never the
password. The stores built on them live in :mod:`workers.adapters.pgvector`, :mod:`workers.adapters.answers`
and :mod:`workers.adapters.traces`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import psycopg
from pgvector.psycopg import register_vector
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from workers.contracts.errors import ServiceUnavailableError

log = logging.getLogger(__name__)


def describe_url(url: str) -> str:
    """``host:port/dbname`` of a libpq URL/DSN, without user or password (for one-line error messages)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparsable database url>"
    host = info.get("host") or "localhost"
    port = info.get("port") or "5432"
    return f"{host}:{port}/{info.get('dbname') or ''}"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (psycopg errors carry multi-line details), or its type name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def open_pool(
    url: str,
    min_size: int = 1,
    max_size: int = 4,
    *,
    timeout_s: float = 10.0,
    vector: bool = False,
    name: str = "ragstream",
    open_now: bool = True,
) -> ConnectionPool:
    """A psycopg connection pool, opened and checked (or left closed for the caller to open later).

    Args:
        url: libpq URL or DSN, e.g. ``postgresql://postgres@127.0.0.1:5432/ragstream``.
        min_size: connections kept open.
        max_size: most connections at once.
        timeout_s: seconds to wait for the server at start-up (also the pool's wait for a connection).
        vector: connections know pgvector's types; first connects once to run
            ``CREATE EXTENSION IF NOT EXISTS vector`` (the type must exist before ``register_vector``).
        name: the pool's name (in psycopg's logs).
        open_now: open it now and fail fast; False returns it closed (the monitor opens it in its agent,
            retrying, so that start-up does not block on the database).

    Returns:
        The pool; close it with ``pool.close()`` (or use it as a context manager).

    Raises:
        ServiceUnavailableError: the database cannot be reached, refuses the login, or lacks pgvector.
    """
    where = describe_url(url)
    connect_timeout = max(1, int(timeout_s))
    if vector and open_now:
        try:
            with psycopg.connect(url, connect_timeout=connect_timeout, autocommit=True) as conn:
                try:
                    # Two processes starting on a new database at once would race on the catalog (CREATE
                    # EXTENSION IF NOT EXISTS is not atomic): a transaction-scoped advisory lock serialises them.
                    with conn.transaction():
                        conn.execute("SELECT pg_advisory_xact_lock(hashtext('ragstream create extension vector'))")
                        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                except psycopg.Error as exc:
                    raise ServiceUnavailableError(
                        f"PostgreSQL at {where} has no pgvector extension and it cannot be created: {first_line(exc)}"
                    ) from exc
        except psycopg.Error as exc:
            raise ServiceUnavailableError(f"cannot connect to PostgreSQL at {where}: {first_line(exc)}") from exc
    pool = ConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        kwargs={"connect_timeout": connect_timeout},
        configure=register_vector if vector else None,
        timeout=timeout_s,
        open=False,
        name=f"{name}-{where}",
    )
    if not open_now:
        return pool
    try:
        pool.open(wait=True, timeout=timeout_s)
    except PoolTimeout as exc:
        pool.close()
        raise ServiceUnavailableError(
            f"cannot open a connection pool to PostgreSQL at {where} within {timeout_s:g} s"
        ) from exc
    log.info("database pool open where=%s min_size=%d max_size=%d", where, min_size, max_size)
    return pool


async def open_async_pool(
    url: str, max_size: int = 4, timeout_s: float = 10.0, *, purpose: str = "the answer store", hint: str = ""
) -> AsyncConnectionPool:
    """Open an async psycopg pool, failing fast with a one-line error.

    Args:
        url: libpq URL or DSN.
        max_size: most connections at once.
        timeout_s: seconds to wait for the first connection.
        purpose: what the pool is for, in the error message.
        hint: what the user can set, in the error message (default: ``RAG_DATABASE_URL``).

    Raises:
        ServiceUnavailableError: no connection within ``timeout_s`` seconds (the password is not shown).
    """
    pool = AsyncConnectionPool(url, min_size=1, max_size=max_size, open=False, timeout=timeout_s)
    try:
        await pool.open(wait=True, timeout=timeout_s)
    except Exception as exc:
        await pool.close()
        raise ServiceUnavailableError(
            f"cannot connect to PostgreSQL for {purpose} at {describe_url(url)} "
            f"({hint or 'set RAG_DATABASE_URL'}): {first_line(exc)}"
        ) from None
    return pool


def connect(url: str, timeout_s: float = 10.0, *, autocommit: bool = False) -> psycopg.Connection:
    """One connection for a one-off query (evaluation tools); use it as a context manager.

    Raises:
        psycopg.OperationalError: the database cannot be reached within ``timeout_s`` seconds.
    """
    return psycopg.connect(url, connect_timeout=max(1, int(timeout_s)), autocommit=autocommit)


def table_sizes(url: str, prefixes: Sequence[str], timeout_s: float = 10.0) -> dict[str, int]:
    """Tables of the current schema whose names start with one of ``prefixes``, with their size in bytes
    (``pg_total_relation_size``: data, indexes and TOAST).

    Raises:
        ServiceUnavailableError: the database cannot be reached.
    """
    if not prefixes:
        return {}
    query = (
        "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND n.nspname = current_schema() AND c.relname LIKE ANY(%s)"
    )
    patterns = [p.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "%" for p in prefixes]
    try:
        with connect(url, timeout_s) as conn:
            rows = conn.execute(query, (patterns,)).fetchall()
    except psycopg.OperationalError as exc:
        raise ServiceUnavailableError(
            f"cannot connect to PostgreSQL at {describe_url(url)}: {first_line(exc)}"
        ) from None
    return {str(name): int(size) for name, size in rows}


def drop_tables(url: str, tables: Sequence[str], timeout_s: float = 10.0) -> list[str]:
    """Drop tables (``DROP TABLE IF EXISTS``) in one transaction; returns those that existed.

    Raises:
        ServiceUnavailableError: the database cannot be reached.
    """
    from psycopg import sql

    existing = [t for t in tables if t in table_sizes(url, [t], timeout_s)]
    if not existing:
        return []
    try:
        with connect(url, timeout_s) as conn:
            conn.execute(
                sql.SQL("DROP TABLE IF EXISTS {}").format(sql.SQL(", ").join(sql.Identifier(t) for t in existing))
            )
    except psycopg.OperationalError as exc:
        raise ServiceUnavailableError(
            f"cannot connect to PostgreSQL at {describe_url(url)}: {first_line(exc)}"
        ) from None
    log.info("dropped tables %s", existing)
    return existing
