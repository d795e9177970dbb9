"""VectorStore against the real PostgreSQL + pgvector of the test stack."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import psycopg
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from workers.adapters.interfaces import ChunkRow
from workers.adapters.pgvector import VectorStore
from workers.adapters.postgres import open_pool
from workers.contracts.errors import DimensionMismatchError, ServiceUnavailableError


@pytest.fixture(scope="module")
def pool(stack) -> Iterator[ConnectionPool]:  # type: ignore[no-untyped-def]  # stack: conftest fixture
    p = open_pool(stack.database_url, min_size=1, max_size=4, vector=True)
    yield p
    p.close()


@pytest.fixture
def make_store(pool: ConnectionPool, unique: str) -> Iterator[Callable[..., VectorStore]]:
    """``make_store(dimension, suffix="")`` → a store on a fresh table, dropped when the test ends."""
    tables: list[str] = []

    def _make(dimension: int, suffix: str = "") -> VectorStore:
        table = f"t_{unique}{suffix}"
        tables.append(table)
        return VectorStore(pool, table=table, dimension=dimension)

    yield _make
    with pool.connection() as conn:
        for t in tables:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(t)))


def _row(doc: str, i: int, vec: list[float] | np.ndarray, text: str | None = None) -> ChunkRow:
    text = text if text is not None else f"{doc} chunk {i}"
    return ChunkRow(
        chunk_id=f"{doc}#{i}",
        document_id=doc,
        chunk_index=i,
        text=text,
        content_hash=f"h-{doc}-{i}",
        token_count=3,
        embedding=vec,
    )


def test_cosine_distance_orders_by_similarity(make_store: Callable[..., VectorStore]) -> None:
    store = make_store(3)
    store.ensure_schema()
    store.upsert(
        [
            _row("d", 0, [1, 0, 0], "a"),
            _row("d", 1, [1, 1, 0], "b"),
            _row("d", 2, [-1, 0, 0], "c"),
        ]
    )
    for search in (store.search, store.exact_search):
        hits = search([1.0, 0.0, 0.0], 2)
        assert [h.text for h in hits] == ["a", "b"]
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert round(hits[1].score, 4) == 0.7071
        assert "c" not in {h.text for h in hits}
    # The opposite vector is last with similarity -1.
    assert store.exact_search([1.0, 0.0, 0.0], 3)[-1].score == pytest.approx(-1.0, abs=1e-4)


def test_upsert_is_idempotent_and_filters_work(make_store: Callable[..., VectorStore]) -> None:
    store = make_store(3)
    store.ensure_schema()
    rows = [_row("with", 0, [1, 0, 0]), _row("with", 1, [0, 1, 0]), _row("try", 0, [0, 0, 1])]
    assert store.upsert(rows) == 3
    assert store.upsert(rows) == 0
    # Same text (content hash) under another chunk id of the same document is not stored twice.
    dup = ChunkRow("with#9", "with", 9, "x", rows[0].content_hash, 1, [1, 0, 0])
    assert store.upsert([dup]) == 0
    assert store.count() == 3
    assert {h.document_id for h in store.search([0, 0, 1], 5, {"document_id": "with"})} == {"with"}
    assert len(store.search([0, 0, 1], 5, {"document_id": ["with", "try"]})) == 3
    assert store.existing_hashes(["with"]) == {("with", "h-with-0"), ("with", "h-with-1")}


def test_filtered_search_returns_full_k_with_hnsw(make_store: Callable[..., VectorStore], pool: ConnectionPool) -> None:
    n, dim, docs, k = 20_000, 384, 50, 5
    rng = np.random.default_rng(1234)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    store = make_store(dim)
    store.ensure_schema()
    with pool.connection() as conn:
        # Load first (COPY), build the HNSW index afterwards: much faster than indexing row by row.
        conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(f"{store.table}_embedding_hnsw")))
        with (
            conn.cursor() as cur,
            cur.copy(
                sql.SQL(
                    "COPY {} (chunk_id, document_id, chunk_index, text, content_hash, embedding) "
                    "FROM STDIN WITH (FORMAT BINARY)"
                ).format(sql.Identifier(store.table))
            ) as copy,
        ):
            copy.set_types(["text", "text", "int4", "text", "text", "vector"])
            for i in range(n):
                copy.write_row((str(i), f"doc{i % docs}", i // docs, f"row {i}", str(i), x[i]))
    store.create_indexes()
    with pool.connection() as conn:
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(store.table)))
    assert store.count() == n

    q = rng.standard_normal(dim).astype(np.float32)
    filters = {"document_id": "doc7"}

    # The search really goes through the HNSW index (not the document_id btree), with iterative scan.
    with pool.connection() as conn, conn.transaction():
        conn.execute("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)")
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                sql.SQL(
                    "EXPLAIN SELECT chunk_id FROM {} WHERE document_id = %s ORDER BY embedding <=> %s LIMIT 5"
                ).format(sql.Identifier(store.table)),
                ("doc7", q),
            )
        )
    assert f"{store.table}_embedding_hnsw" in plan, plan

    hits = store.search(q, k, filters)
    exact = store.exact_search(q, k, filters)
    assert len(hits) == k
    assert {h.document_id for h in hits} == {"doc7"}
    assert [h.chunk_id for h in hits] == [h.chunk_id for h in exact]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)

    # A batch (one connection, one transaction) gives the same as single searches.
    batch = store.search_many([q, x[3]], k, filters)
    assert [h.chunk_id for h in batch[0]] == [h.chunk_id for h in hits]
    assert len(batch[1]) == k

    # Without the iterative scan pgvector would stop after ef_search candidates, ~1/50 of them matching.
    with pool.connection() as conn, conn.transaction():
        conn.execute("SELECT set_config('hnsw.iterative_scan', 'off', true)")
        rows = conn.execute(
            sql.SQL("SELECT chunk_id FROM {} WHERE document_id = %s ORDER BY embedding <=> %s LIMIT 5").format(
                sql.Identifier(store.table)
            ),
            ("doc7", q),
        ).fetchall()
    assert len(rows) < k


def test_dimension_mismatch_names_both_numbers(make_store: Callable[..., VectorStore]) -> None:
    make_store(1536).ensure_schema()
    store_384 = make_store(384)  # same table name: the model gives 384
    with pytest.raises(DimensionMismatchError) as info:
        store_384.check_dimension("all-MiniLM-L6-v2")
    message = str(info.value)
    assert "1536" in message and "384" in message and "all-MiniLM-L6-v2" in message
    with pytest.raises(DimensionMismatchError):
        store_384.ensure_schema()


def test_concurrent_searches_through_a_pool_of_four(
    make_store: Callable[..., VectorStore], pool: ConnectionPool
) -> None:
    assert pool.max_size == 4
    dim, k = 384, 5
    rng = np.random.default_rng(7)
    x = rng.standard_normal((200, dim)).astype(np.float32)
    store = make_store(dim)
    store.ensure_schema()
    assert store.upsert([_row(f"doc{i % 4}", i, x[i]) for i in range(len(x))]) == len(x)

    queries: list[list[float] | np.ndarray] = []
    for i in range(8):
        v = rng.standard_normal(dim).astype(np.float32)
        queries.append(v.tolist() if i % 2 == 0 else v)  # plain Python lists and numpy arrays
    results: dict[int, list[str]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = [h.chunk_id for h in store.search(queries[i], k)]
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert sorted(results) == list(range(8))
    for i, ids in results.items():
        assert len(ids) == k
        assert ids == [h.chunk_id for h in store.exact_search(queries[i], k)]


def test_four_connections_creating_one_table_at_once_all_succeed(
    make_store: Callable[..., VectorStore], pool: ConnectionPool
) -> None:
    """Two ingests (or an ingest and a retriever) starting on a new table at the same moment: ``CREATE ... IF NOT
    EXISTS`` alone races on the catalog and one of them fails on a unique key of ``pg_type``/``pg_class``; the
    advisory lock in ``ensure_schema`` makes every caller succeed. Four connections, five new tables."""
    assert pool.max_size == 4
    for n in range(5):
        stores = [make_store(8, suffix=f"_race{n}") for _ in range(4)]  # same table name, four stores
        errors: list[BaseException] = []
        barrier = threading.Barrier(4)

        def worker(store: VectorStore, barrier: threading.Barrier, errors: list[BaseException]) -> None:
            try:
                barrier.wait(timeout=30)
                store.ensure_schema()
            except BaseException as exc:  # collected and re-raised in the test thread
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(s, barrier, errors)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
        assert stores[0].column_dimension() == 8


def test_unreachable_database_fails_fast_with_one_line() -> None:
    with socket_closed_port() as port:
        t0 = time.monotonic()
        with pytest.raises(ServiceUnavailableError) as info:
            open_pool(f"postgresql://postgres@127.0.0.1:{port}/nope", timeout_s=3, vector=True)
        assert time.monotonic() - t0 < 10
    message = str(info.value)
    assert "\n" not in message and f"127.0.0.1:{port}" in message


def test_wrong_database_name_is_service_unavailable(stack) -> None:  # type: ignore[no-untyped-def]
    info = psycopg.conninfo.conninfo_to_dict(stack.database_url)
    info["dbname"] = "no_such_database_ragstream"
    with pytest.raises(ServiceUnavailableError, match="no_such_database_ragstream"):
        open_pool(psycopg.conninfo.make_conninfo("", **info), timeout_s=3, vector=True)


class socket_closed_port:
    """A local TCP port nobody listens on (bound then closed)."""

    def __enter__(self) -> int:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
        s.close()
        return port

    def __exit__(self, *exc: object) -> None:
        return None
