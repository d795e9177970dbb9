"""The search statements of the chunk store: dense (HNSW cosine), full text, and the two fused by reciprocal rank.

One statement per query and mode, under the same metadata filters (so every mode keeps the full ``k`` when
enough rows match):

* **dense**: ``ORDER BY embedding <=> q LIMIT k`` on the HNSW index (pgvector's iterative scan keeps scanning
  until ``k`` rows pass the filters);
* **text**: chunks whose ``search_text`` matches ANY of the query's lexemes, ranked by ``ts_rank_cd`` (cover
  density: more of the query's words, closer together, rank higher). The query is the OR of the lexemes of
  ``to_tsvector(config, query)``, which parses any user text (quotes, ``-``, ``or``, ``:*``, ``&|!``) without a
  syntax error; a query of stop words only matches nothing. ``websearch_to_tsquery`` was measured first: its AND
  of every word matched a chunk of the right topic in the top 5 for 9 of the 20 public questions (hit@5 0.45);
  natural-language questions rarely contain only words of one passage;
* **hybrid**: the top ``candidates`` of each list fused by reciprocal rank, ``Σ w_list / (rrf_k + rank_list)``
  (Cormack, Clarke & Büttcher, "Reciprocal rank fusion outperforms Condorcet and individual rank learning
  methods", SIGIR 2009; k = 60 there), ties broken by chunk id. A query whose words match nothing (stop words
  only) gets the dense list alone.

Every row carries the cosine similarity (``1 - distance``), the text rank (``NULL`` when the words did not match)
and, in hybrid mode, the fused score. Parameters are named (``%(q)s`` the vector, ``%(text)s`` the query text,
``%(k)s``, ``%(n)s`` the candidates, ``%(rrf)s``, ``%(wd)s``, ``%(wt)s``, ``%(cfg)s`` the text search
configuration, ``%(f<i>k)s``/``%(f<i>v)s`` the filters).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from psycopg import sql

Mode = Literal["dense", "text", "hybrid"]
#: Filter keys matched against columns; any other key matches ``metadata ->> key``.
COLUMN_FILTERS = ("document_id", "chunk_id")

_COLS = "c.chunk_id, c.document_id, c.chunk_index, c.text, c.context"
#: The query as the OR of its lexemes: ``to_tsvector`` of the query text (any text parses; stop words dropped,
#: words stemmed by the configuration), each lexeme quoted, joined by ``|``, cast to ``tsquery`` as it is.
_OR_QUERY = (
    "array_to_string(array(SELECT quote_literal(l) FROM "
    "unnest(tsvector_to_array(to_tsvector(%(cfg)s::regconfig, %(text)s))) l), ' | ')::tsquery"
)


def filters_clause(filters: Mapping[str, str | Sequence[str]] | None) -> tuple[sql.Composable, dict[str, Any]]:
    """``AND``-joined conditions of the metadata filters on table alias ``c`` (``TRUE`` without filters), and their
    named parameters: a scalar value means one accepted value, a list any of them."""
    if not filters:
        return sql.SQL("TRUE"), {}
    parts: list[sql.Composable] = []
    params: dict[str, Any] = {}
    for i, (key, value) in enumerate(filters.items()):
        values = [value] if isinstance(value, str) else [str(x) for x in value]
        params[f"f{i}v"] = values
        if key in COLUMN_FILTERS:
            parts.append(sql.SQL("c.{col} = ANY(%(f{i}v)s)").format(col=sql.Identifier(key), i=sql.SQL(str(i))))
        else:
            params[f"f{i}k"] = key
            parts.append(sql.SQL("c.metadata ->> %(f{i}k)s = ANY(%(f{i}v)s)").format(i=sql.SQL(str(i))))
    return sql.SQL(" AND ").join(parts), params


def dense_statement(table: sql.Identifier, where: sql.Composable) -> sql.Composed:
    """The ``k`` nearest chunks by cosine distance (HNSW)."""
    return sql.SQL(
        "SELECT " + _COLS + ", c.embedding <=> %(q)s AS distance, NULL::float8 AS text_score, NULL::float8 AS fused "
        "FROM {t} c WHERE {where} ORDER BY c.embedding <=> %(q)s LIMIT %(k)s"
    ).format(t=table, where=where)


def _lexical(table: sql.Identifier, where: sql.Composable, limit: str) -> sql.Composed:
    """Chunks whose ``search_text`` matches the query, best ``ts_rank_cd`` first, ``LIMIT`` ``limit``."""
    return sql.SQL(
        "SELECT c.chunk_id, ts_rank_cd(c.search_text, tq.q) AS rank "
        "FROM {t} c, (SELECT " + _OR_QUERY + " AS q) tq "
        "WHERE {where} AND c.search_text @@ tq.q ORDER BY rank DESC, c.chunk_id LIMIT " + limit
    ).format(t=table, where=where)


def text_statement(table: sql.Identifier, where: sql.Composable) -> sql.Composed:
    """The ``k`` chunks ranked best by full-text search (none when the query's words match nothing)."""
    return sql.SQL(
        "WITH lex AS ({lex}) "
        "SELECT " + _COLS + ", c.embedding <=> %(q)s AS distance, lex.rank AS text_score, NULL::float8 AS fused "
        "FROM lex JOIN {t} c USING (chunk_id) ORDER BY lex.rank DESC, c.chunk_id"
    ).format(lex=_lexical(table, where, "%(k)s"), t=table)


def hybrid_statement(table: sql.Identifier, where: sql.Composable) -> sql.Composed:
    """The ``k`` chunks of the reciprocal-rank fusion of the dense and the text top ``n``."""
    return sql.SQL(
        "WITH dense AS ("
        "  SELECT c.chunk_id, c.embedding <=> %(q)s AS distance FROM {t} c WHERE {where} "
        "  ORDER BY c.embedding <=> %(q)s LIMIT %(n)s"
        "), dense_r AS ("
        "  SELECT chunk_id, row_number() OVER (ORDER BY distance, chunk_id) AS r FROM dense"
        "), lex AS ({lex}), lex_r AS ("
        "  SELECT chunk_id, rank, row_number() OVER (ORDER BY rank DESC, chunk_id) AS r FROM lex"
        "), fused AS ("
        "  SELECT chunk_id, lex_r.rank AS text_score,"
        "         coalesce(%(wd)s / (%(rrf)s + dense_r.r), 0) + coalesce(%(wt)s / (%(rrf)s + lex_r.r), 0) AS score"
        "  FROM dense_r FULL OUTER JOIN lex_r USING (chunk_id)"
        ") "
        "SELECT " + _COLS + ", c.embedding <=> %(q)s AS distance, fused.text_score, fused.score AS fused "
        "FROM fused JOIN {t} c USING (chunk_id) ORDER BY fused.score DESC, c.chunk_id LIMIT %(k)s"
    ).format(t=table, where=where, lex=_lexical(table, where, "%(n)s"))


def statement(mode: Mode, table: sql.Identifier, where: sql.Composable) -> sql.Composed:
    """The search statement of ``mode`` on ``table`` under the ``where`` of :func:`filters_clause`.

    Raises:
        ValueError: an unknown mode.
    """
    if mode == "dense":
        return dense_statement(table, where)
    if mode == "text":
        return text_statement(table, where)
    if mode == "hybrid":
        return hybrid_statement(table, where)
    raise ValueError(f"unknown search mode {mode!r}: dense, text or hybrid")
