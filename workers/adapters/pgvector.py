"""The chunk store: PostgreSQL + pgvector through psycopg 3 and a connection pool (no ML, no Kafka).

One table per corpus (default ``rag_chunks``)::

    chunk_id text PRIMARY KEY, document_id text, chunk_index int, text text, context text, content_hash text,
    token_count int, metadata jsonb, embedding vector(dim), created_at timestamptz,
    search_text tsvector GENERATED ALWAYS AS (setweight(to_tsvector(config, context), 'A') ||
        setweight(to_tsvector(config, text), 'D')) STORED,
    UNIQUE (document_id, content_hash)

with an HNSW index ``USING hnsw (embedding vector_cosine_ops)``, a GIN index on ``search_text`` and a btree on
``document_id``. ``context`` is the chunk's title / nearest heading: embedded and indexed with the text, shown
apart from it.

Search (:mod:`workers.adapters.search_sql`): ``dense`` orders by cosine distance ``embedding <=> q`` on the HNSW
index with pgvector 0.8's iterative index scan (``hnsw.iterative_scan = relaxed_order``), so a filtered search
keeps scanning the graph until it has ``k`` matching rows instead of returning fewer (results are re-sorted by
distance in Python, as relaxed order asks); ``text`` ranks full-text matches; ``hybrid`` fuses the two by
reciprocal rank. Scores are cosine SIMILARITIES ``1 - (embedding <=> q)`` in ``[-1, 1]`` in every mode.

Database errors are translated here: connection trouble → :class:`RetryableError`, a missing table →
:class:`ConfigError`, anything else → :class:`PermanentError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from workers.adapters.interfaces import ChunkRow, Hit
from workers.adapters.postgres import first_line
from workers.adapters.search_sql import COLUMN_FILTERS, Mode, filters_clause, statement
from workers.contracts.errors import (
    ConfigError,
    DimensionMismatchError,
    PermanentError,
    RetryableError,
)
from workers.settings import RetrieverSettings

logger = logging.getLogger(__name__)

#: Query vectors: a plain list of floats or a 1-d numpy array of ``dimension`` values.
VectorLike = Sequence[float] | np.ndarray
#: Metadata filters: key → one value or a list of accepted values. ``document_id`` and ``chunk_id`` match
#: columns; any other key matches ``metadata ->> key``.
Filters = Mapping[str, str | Sequence[str]]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
#: pgvector's upper bound for ``hnsw.ef_search``.
_MAX_EF_SEARCH = 1000


@contextlib.contextmanager
def _translate(action: str) -> Iterator[None]:
    try:
        yield
    except (RetryableError, PermanentError):
        raise
    except PoolTimeout as exc:
        raise RetryableError(f"{action}: no database connection available: {exc}") from exc
    except psycopg.errors.UndefinedTable as exc:
        raise ConfigError(f"{action}: {first_line(exc)} (run `ragstream ingest` first?)") from exc
    except psycopg.OperationalError as exc:
        raise RetryableError(f"{action}: database unavailable: {first_line(exc)}") from exc
    except psycopg.Error as exc:
        raise PermanentError(f"{action}: {type(exc).__name__}: {first_line(exc)}") from exc


class VectorStore:
    """Chunks and their embeddings in one pgvector table.

    Args:
        pool: an open pool from :func:`open_pool` (connections configured with ``register_vector``).
        table: table name (letters, digits, ``_``; at most 63 characters).
        dimension: embedding dimension the caller will write and query with (384 for all-MiniLM-L6-v2).
        ef_search: default HNSW ``ef_search`` (candidates kept during the graph search); raised to ``k``.

    Raises:
        ConfigError: the table name is not a plain identifier.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        table: str = "rag_chunks",
        dimension: int = 384,
        *,
        ef_search: int = 80,
        mode: Mode = "dense",
        rrf_k: int = 60,
        dense_weight: float = 1.0,
        text_weight: float = 0.75,
        candidates: int = 40,
        text_config: str = "english",
    ) -> None:
        if not _IDENT.match(table):
            raise ConfigError(f"invalid table name {table!r}: use letters, digits and _ (at most 63)")
        if not _IDENT.match(text_config):
            raise ConfigError(f"invalid text search configuration {text_config!r}")
        self.pool = pool
        self.table = table
        self.dimension = dimension
        self.ef_search = ef_search
        self.mode: Mode = mode
        self.rrf_k = rrf_k
        self.dense_weight = dense_weight
        self.text_weight = text_weight
        self.candidates = candidates
        self.text_config = text_config
        self._t = sql.Identifier(table)

    @classmethod
    def from_settings(cls, pool: ConnectionPool, retriever: RetrieverSettings, dimension: int) -> VectorStore:
        """The store of the retriever's settings: table, ``ef_search``, search mode and fusion parameters."""
        r = retriever
        return cls(
            pool,
            table=r.table,
            dimension=dimension,
            ef_search=r.ef_search,
            mode=r.mode,
            rrf_k=r.rrf_k,
            dense_weight=r.dense_weight,
            text_weight=r.text_weight,
            candidates=r.candidates,
            text_config=r.text_config,
        )

    def _index_name(self, suffix: str) -> sql.Identifier:
        name = f"{self.table}_{suffix}"
        if len(name) > 63:
            name = f"{self.table[:40]}_{hashlib.sha256(name.encode()).hexdigest()[:8]}_{suffix[:10]}"
        return sql.Identifier(name)

    # -- schema -----------------------------------------------------------------------------------------

    def ensure_schema(self, model_name: str | None = None) -> None:
        """Create the extension, the table and its indexes if missing, then :meth:`check_dimension`.

        Idempotent. The HNSW index is created here too; for a bulk load into an empty table, loading first
        and calling :meth:`create_indexes` afterwards builds the graph faster.

        Raises:
            DimensionMismatchError: an existing table's vector column has another dimension.
            RetryableError: the database is unavailable.
            PermanentError: any other database error (e.g. missing privileges).
        """
        with _translate(f"create table {self.table}"), self.pool.connection() as conn, conn.transaction():
            self._serialise_ddl(conn)
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            conn.execute(
                sql.SQL(
                    """CREATE TABLE IF NOT EXISTS {t} (
                        chunk_id text PRIMARY KEY,
                        document_id text NOT NULL,
                        chunk_index integer NOT NULL,
                        text text NOT NULL,
                        content_hash text NOT NULL,
                        token_count integer NOT NULL DEFAULT 0,
                        metadata jsonb NOT NULL DEFAULT '{{}}'::jsonb,
                        embedding vector({dim}) NOT NULL,
                        created_at timestamptz NOT NULL DEFAULT now(),
                        UNIQUE (document_id, content_hash)
                    )"""
                ).format(t=self._t, dim=sql.Literal(self.dimension))
            )
            # Added after the first release: a table made before gets them here (the generated column is filled
            # for the existing rows by this statement).
            conn.execute(
                sql.SQL(
                    "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS context text NOT NULL DEFAULT '', "
                    "ADD COLUMN IF NOT EXISTS search_text tsvector GENERATED ALWAYS AS "
                    "(setweight(to_tsvector({cfg}::regconfig, context), 'A') || "
                    "setweight(to_tsvector({cfg}::regconfig, text), 'D')) STORED"
                ).format(t=self._t, cfg=sql.Literal(self.text_config))
            )
        self.check_dimension(model_name)
        self.create_indexes()

    def create_indexes(self) -> None:
        """Create the HNSW cosine index, the GIN full-text index and the ``document_id`` btree if missing
        (idempotent).

        Raises:
            RetryableError: the database is unavailable.
            PermanentError: any other database error.
        """
        with _translate(f"create indexes on {self.table}"), self.pool.connection() as conn, conn.transaction():
            self._serialise_ddl(conn)
            conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} USING hnsw (embedding vector_cosine_ops)").format(
                    i=self._index_name("embedding_hnsw"), t=self._t
                )
            )
            conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} USING gin (search_text)").format(
                    i=self._index_name("search_text_gin"), t=self._t
                )
            )
            conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {i} ON {t} (document_id)").format(
                    i=self._index_name("document_id"), t=self._t
                )
            )

    def _serialise_ddl(self, conn: psycopg.Connection[Any]) -> None:
        """Hold a transaction-scoped advisory lock on this table's name: two processes creating the same table or
        index at once (two ingests, an ingest and a retriever starting) would otherwise race on the catalog
        (``CREATE ... IF NOT EXISTS`` is not atomic: one of them fails on a unique key of ``pg_type`` or
        ``pg_class``). The lock ends with the transaction."""
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"ragstream ddl {self.table}",))

    def column_dimension(self) -> int | None:
        """Dimension of the table's ``embedding`` column (``None`` when the table does not exist).

        Raises:
            ConfigError: the table exists but has no ``embedding vector(n)`` column.
        """
        with _translate(f"read the dimension of {self.table}"), self.pool.connection() as conn:
            row = conn.execute(
                """SELECT format_type(a.atttypid, a.atttypmod), a.atttypmod, t.typname
                   FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
                   WHERE a.attrelid = to_regclass(%s) AND a.attname = 'embedding' AND NOT a.attisdropped""",
                (self.table,),
            ).fetchone()
            if row is None:
                exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (self.table,)).fetchone()
                if exists and exists[0]:
                    raise ConfigError(f"table {self.table} has no 'embedding' column")
                return None
        type_text, typmod, typname = row
        if typname != "vector" or typmod is None or typmod < 1:
            raise ConfigError(f"table {self.table} column 'embedding' is {type_text}, expected vector(n)")
        return int(typmod)

    def check_dimension(self, model_name: str | None = None) -> None:
        """Verify the table's vector dimension equals :attr:`dimension`; no-op if the table is missing.

        Args:
            model_name: named in the error message (e.g. ``all-MiniLM-L6-v2``).

        Raises:
            DimensionMismatchError: the column has another dimension; the message names both numbers.
            ConfigError: the ``embedding`` column is missing or not a ``vector(n)``.
        """
        dim = self.column_dimension()
        if dim is not None and dim != self.dimension:
            model = f"the embedding model {model_name}" if model_name else "the embedding model"
            raise DimensionMismatchError(
                f"table {self.table} has vector({dim}) but {model} gives {self.dimension} dimensions; "
                f"use another table (RAG_RETRIEVER__TABLE) or re-ingest with the matching model"
            )

    # -- writes -----------------------------------------------------------------------------------------

    def existing_hashes(self, document_ids: Sequence[str]) -> set[tuple[str, str]]:
        """``(document_id, content_hash)`` pairs already stored for these documents.

        Raises:
            RetryableError: the database is unavailable.
            ConfigError: the table does not exist.
        """
        if not document_ids:
            return set()
        with _translate(f"read hashes from {self.table}"), self.pool.connection() as conn:
            rows = conn.execute(
                sql.SQL("SELECT document_id, content_hash FROM {t} WHERE document_id = ANY(%s)").format(t=self._t),
                (list(document_ids),),
            ).fetchall()
        return {(r[0], r[1]) for r in rows}

    def upsert(self, chunks: Sequence[ChunkRow]) -> int:
        """Insert chunks in one transaction (binary COPY into a temporary table, then
        ``INSERT … ON CONFLICT DO NOTHING``); rows whose ``chunk_id`` or ``(document_id, content_hash)``
        already exist are skipped, so re-ingesting the same text adds nothing.

        Note: a changed document whose chunk ids already exist keeps its old chunks; delete it first
        (:meth:`delete_documents`).

        Args:
            chunks: rows with ``(dimension,)`` embeddings.

        Returns:
            Rows inserted.

        Raises:
            DimensionMismatchError: an embedding does not have :attr:`dimension` values.
            RetryableError: the database is unavailable.
            PermanentError: any other database error.
        """
        if not chunks:
            return 0
        vectors = [self._as_vector(c.embedding) for c in chunks]
        cols = "chunk_id, document_id, chunk_index, text, context, content_hash, token_count, metadata, embedding"
        with _translate(f"insert into {self.table}"), self.pool.connection() as conn, conn.transaction():
            tmp = sql.Identifier(f"_ingest_{self.table}"[:63])
            conn.execute(
                sql.SQL("CREATE TEMP TABLE {tmp} (LIKE {t} INCLUDING DEFAULTS) ON COMMIT DROP").format(
                    tmp=tmp, t=self._t
                )
            )
            with conn.cursor() as cur:
                with cur.copy(
                    sql.SQL("COPY {tmp} ({cols}) FROM STDIN WITH (FORMAT BINARY)").format(tmp=tmp, cols=sql.SQL(cols))
                ) as copy:
                    copy.set_types(["text", "text", "int4", "text", "text", "text", "int4", "jsonb", "vector"])
                    for c, vec in zip(chunks, vectors, strict=True):
                        copy.write_row(
                            (
                                c.chunk_id,
                                c.document_id,
                                c.chunk_index,
                                c.text,
                                c.context,
                                c.content_hash,
                                c.token_count,
                                Jsonb(c.metadata),
                                vec,
                            )
                        )
                cur.execute(
                    sql.SQL(
                        "INSERT INTO {t} ({cols}) SELECT {cols} FROM {tmp} ORDER BY document_id, chunk_index "
                        "ON CONFLICT DO NOTHING"
                    ).format(t=self._t, tmp=tmp, cols=sql.SQL(cols))
                )
                inserted = max(cur.rowcount, 0)
        logger.debug("upsert table=%s rows=%d inserted=%d", self.table, len(chunks), inserted)
        return inserted

    def delete_documents(self, document_ids: Sequence[str]) -> int:
        """Delete every chunk of these documents; returns rows deleted.

        Raises:
            RetryableError: the database is unavailable.
        """
        with _translate(f"delete from {self.table}"), self.pool.connection() as conn:
            cur = conn.execute(
                sql.SQL("DELETE FROM {t} WHERE document_id = ANY(%s)").format(t=self._t), (list(document_ids),)
            )
            return max(cur.rowcount, 0)

    def filter_fields(self) -> frozenset[str]:
        """The fields a search filter may name: the columns ``document_id``, ``chunk_id`` and every key of the
        stored chunks' ``metadata`` (one scan of the table; callers cache it).

        Raises:
            RetryableError: the database is unavailable.
            ConfigError: the table does not exist.
        """
        with _translate(f"read the metadata keys of {self.table}"), self.pool.connection() as conn:
            rows = conn.execute(
                sql.SQL("SELECT DISTINCT jsonb_object_keys(metadata) FROM {t}").format(t=self._t)
            ).fetchall()
        return frozenset(COLUMN_FILTERS) | {str(r[0]) for r in rows}

    def count(self) -> int:
        """Rows in the table.

        Raises:
            ConfigError: the table does not exist.
        """
        with _translate(f"count {self.table}"), self.pool.connection() as conn:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {t}").format(t=self._t)).fetchone()
        return int(row[0]) if row else 0

    # -- reads ------------------------------------------------------------------------------------------

    def _as_vector(self, v: VectorLike) -> np.ndarray:
        arr = np.asarray(v, dtype=np.float32)
        if arr.ndim != 1 or arr.shape[0] != self.dimension:
            raise DimensionMismatchError(
                f"vector of shape {arr.shape} given to table {self.table} of vector({self.dimension})"
            )
        return arr

    def _run(
        self,
        vectors: Sequence[VectorLike],
        k: int,
        filters: Sequence[Filters | None],
        ef_search: int | None,
        exact: bool,
        queries: Sequence[str] | None = None,
        mode: Mode | None = None,
    ) -> list[list[Hit]]:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if len(filters) != len(vectors):
            raise ValueError(f"{len(vectors)} vectors but {len(filters)} filters")
        use = mode or self.mode
        if use != "dense" and (queries is None or len(queries) != len(vectors)):
            raise ValueError(f"{use} search needs one query text per vector")
        arrays = [self._as_vector(v) for v in vectors]
        n = max(self.candidates, k)
        out: list[list[Hit]] = []
        with _translate(f"search {self.table}"), self.pool.connection() as conn, conn.transaction():
            if exact:
                # HNSW is only reachable through an index scan; without it the plan is a sequential (or a
                # document_id bitmap) scan that computes every distance.
                conn.execute("SELECT set_config('enable_indexscan', 'off', true)")
            else:
                # SET LOCAL semantics (is_local=true): the settings end with this transaction.
                ef = min(max(ef_search or self.ef_search, n if use == "hybrid" else k), _MAX_EF_SEARCH)
                # enable_seqscan off: on a small table (hundreds to a few thousand chunks) the planner costs the
                # HNSW index scan above a sequential scan + sort, but the sequential scan reads every TOASTed
                # vector: 4.3 ms a query against 0.4 ms for the index scan on 622 rows (EXPLAIN ANALYZE). A
                # filtered query may still use a btree/bitmap plan. force_custom_plan: psycopg prepares a
                # statement run 5 times on a connection, and a generic plan does not know the LIMIT.
                conn.execute(
                    "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true), "
                    "set_config('hnsw.ef_search', %s, true), "
                    "set_config('enable_seqscan', 'off', true), "
                    "set_config('plan_cache_mode', 'force_custom_plan', true)",
                    (str(ef),),
                )
            with conn.cursor() as cur:
                for i, vec in enumerate(arrays):
                    where, params = filters_clause(filters[i])
                    params.update(
                        q=vec,
                        k=k,
                        n=n,
                        text=queries[i] if queries is not None else "",
                        cfg=self.text_config,
                        rrf=self.rrf_k,
                        wd=self.dense_weight,
                        wt=self.text_weight,
                    )
                    cur.execute(statement("dense" if exact else use, self._t, where), params)
                    rows = cur.fetchall()
                    out.append(self._hits(rows, use if not exact else "dense"))
        return out

    @staticmethod
    def _hits(rows: Sequence[Sequence[Any]], mode: Mode) -> list[Hit]:
        """Rows ``(chunk_id, document_id, chunk_index, text, context, distance, text_score, fused)`` as hits, best
        first: by distance in dense mode (relaxed order may return rows slightly out of order), else as the
        statement ordered them."""
        ordered = sorted(rows, key=lambda r: r[5]) if mode == "dense" else list(rows)
        return [
            Hit(
                chunk_id=r[0],
                document_id=r[1],
                chunk_index=r[2],
                text=r[3],
                context=r[4],
                score=1.0 - float(r[5]),
                text_score=None if r[6] is None else float(r[6]),
                fused_score=None if r[7] is None else float(r[7]),
            )
            for r in ordered
        ]

    def search(
        self,
        query_vector: VectorLike,
        k: int,
        filters: Filters | None = None,
        ef_search: int | None = None,
        *,
        query: str | None = None,
        mode: Mode | None = None,
    ) -> list[Hit]:
        """The ``k`` best chunks for a query: by cosine distance (HNSW index, iterative scan), by full-text rank,
        or both fused by reciprocal rank (:mod:`workers.adapters.search_sql`).

        Args:
            query_vector: ``(dimension,)`` floats, a list or a numpy array.
            k: rows wanted (fewer only when fewer rows match the filters, or the words in text mode).
            filters: e.g. ``{"document_id": "with"}`` or ``{"document_id": ["with", "try"]}``; other keys
                match ``metadata ->> key``.
            ef_search: HNSW candidate list size for this query (default :attr:`ef_search`, at least ``k``).
            query: the query text (required in ``text`` and ``hybrid`` mode).
            mode: ``dense``, ``text`` or ``hybrid`` (default the store's :attr:`mode`).

        Returns:
            Up to ``k`` hits, best first (``score`` is the cosine similarity in every mode).

        Raises:
            DimensionMismatchError: the query vector does not have :attr:`dimension` values.
            ValueError: ``k < 1``, or no query text in text / hybrid mode.
            RetryableError: the database is unavailable.
            ConfigError: the table does not exist.
        """
        texts = [query] if query is not None else None
        return self._run([query_vector], k, [filters], ef_search, exact=False, queries=texts, mode=mode)[0]

    def search_many(
        self,
        vectors: Sequence[VectorLike] | np.ndarray,
        k: int,
        filters: Filters | Sequence[Filters | None] | None = None,
        ef_search: int | None = None,
        queries: Sequence[str] | None = None,
        *,
        mode: Mode | None = None,
    ) -> list[list[Hit]]:
        """:meth:`search` for a micro-batch of queries on one connection in one transaction.

        Args:
            vectors: n query vectors (a list of vectors or an ``(n, dimension)`` array).
            k: rows wanted per query.
            filters: one filter mapping for all queries, or a sequence of n (``None`` entries: no filter).
            ef_search: as in :meth:`search`.
            queries: the n query texts (required in text and hybrid mode).
            mode: as in :meth:`search`.

        Returns:
            n lists of hits, in the order of ``vectors``.

        Raises:
            As :meth:`search`.
        """
        vecs = list(vectors)
        if filters is None or isinstance(filters, Mapping):
            per_query: list[Filters | None] = [filters] * len(vecs)
        else:
            per_query = list(filters)
        return self._run(vecs, k, per_query, ef_search, exact=False, queries=queries, mode=mode)

    def exact_search(self, query_vector: VectorLike, k: int, filters: Filters | None = None) -> list[Hit]:
        """Exact nearest neighbours (no HNSW: every distance computed); for tests and benchmarks.

        Returns:
            Up to ``k`` hits, best first.

        Raises:
            As :meth:`search`.
        """
        return self._run([query_vector], k, [filters], None, exact=True)[0]
