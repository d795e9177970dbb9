"""Small PostgreSQL helpers shared by the stages that use a database (no ML, no Kafka)."""

from __future__ import annotations

import psycopg


def describe_url(url: str) -> str:
    """``host:port/dbname`` of a libpq URL/DSN, without user or password (for one-line error messages)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparsable database url>"
    host = info.get("host") or "localhost"
    port = info.get("port") or "5432"
    return f"{host}:{port}/{info.get('dbname') or ''}"
