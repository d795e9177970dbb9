"""Hybrid retrieval in PostgreSQL (dense HNSW + full text, fused by reciprocal rank) and chunk context, on the real
embedding model and 50 of Python's reference topics (issue 12, inputs 1 to 5)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from workers.adapters.embedding import Embedder
from workers.adapters.pgvector import VectorStore
from workers.adapters.postgres import open_pool
from workers.retriever.documents import python_docs_documents
from workers.retriever.ingest import ingest, pydoc_title
from workers.settings import EmbeddingSettings

#: The topics indexed: ``nonlocal`` and the first 49 others in name order (50 documents).
DOCS = ["nonlocal", *[d for d, _ in python_docs_documents() if d != "nonlocal"][:49]]


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    e = Embedder.from_settings(EmbeddingSettings())
    yield e
    e.close()


@pytest.fixture(scope="module")
def pool(stack: Any) -> Iterator[ConnectionPool]:
    p = open_pool(stack.database_url, min_size=1, max_size=2, vector=True)
    yield p
    p.close()


@pytest.fixture(scope="module")
def store(pool: ConnectionPool, embedder: Embedder) -> Iterator[VectorStore]:
    s = VectorStore(pool, table="hybrid_test_chunks", dimension=embedder.dimension, mode="hybrid")
    docs = [(d, t) for d, t in python_docs_documents() if d in DOCS]
    ingest(docs, embedder, s, progress=False, titles=pydoc_title)
    yield s
    with pool.connection() as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(s.table)))


def _search(store: VectorStore, embedder: Embedder, query: str, k: int = 5, **kw: Any) -> list[Any]:
    vec = embedder.encode([query]).vectors[0]
    return store.search(vec, k, query=query, **kw)


def test_nonlocal_statement_ranks_the_nonlocal_passage_first_in_hybrid_mode(
    store: VectorStore, embedder: Embedder
) -> None:
    hybrid = [h.document_id for h in _search(store, embedder, "nonlocal statement", k=10)]
    dense = [h.document_id for h in _search(store, embedder, "nonlocal statement", k=10, mode="dense")]
    dense_rank = dense.index("nonlocal") + 1 if "nonlocal" in dense else None
    print(f"\n'nonlocal statement': hybrid rank 1 = {hybrid[0]}; dense rank of nonlocal = {dense_rank} ({dense[:5]})")
    assert hybrid[0] == "nonlocal"


def test_chunks_carry_their_context_and_the_prompt_text_stays_clean(store: VectorStore, embedder: Embedder) -> None:
    hits = _search(store, embedder, "nonlocal statement", k=3)
    top = hits[0]
    assert top.context.startswith("nonlocal: ")  # the topic key and its first line
    assert not top.text.startswith("nonlocal: ")
    assert top.text_score is not None and top.fused_score is not None


def _reference(pool: ConnectionPool, store: VectorStore, vec: Any, query: str, doc: str, k: int) -> list[str]:
    """The hybrid top-k computed in Python over every row of ``doc``: exact cosine ranks and ts_rank_cd ranks of the
    OR of the query's lexemes (no index, no LIMIT inside the database), each list cut at ``candidates``, fused by
    reciprocal rank."""
    with pool.connection() as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT chunk_id, embedding <=> %s AS d, "
                "CASE WHEN search_text @@ q THEN ts_rank_cd(search_text, q) END "
                "FROM {t}, (SELECT array_to_string(array(SELECT quote_literal(l) FROM "
                "unnest(tsvector_to_array(to_tsvector('english', %s))) l), ' | ')::tsquery AS q) tq(q) "
                "WHERE document_id = %s"
            ).format(t=sql.Identifier(store.table)),
            (vec, query, doc),
        ).fetchall()
    n = max(store.candidates, k)
    dense = sorted(rows, key=lambda r: (r[1], r[0]))[:n]
    lex = sorted((r for r in rows if r[2] is not None), key=lambda r: (-r[2], r[0]))[:n]
    fused: dict[str, float] = {}
    for rank, r in enumerate(dense, 1):
        fused[r[0]] = fused.get(r[0], 0.0) + store.dense_weight / (store.rrf_k + rank)
    for rank, r in enumerate(lex, 1):
        fused[r[0]] = fused.get(r[0], 0.0) + store.text_weight / (store.rrf_k + rank)
    return [cid for cid, _ in sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def test_a_filter_on_one_document_keeps_the_full_k_and_equals_the_exact_reference(
    pool: ConnectionPool, store: VectorStore, embedder: Embedder
) -> None:
    with pool.connection() as conn:
        row = conn.execute(
            sql.SQL("SELECT document_id FROM {t} GROUP BY document_id HAVING count(*) >= 5 ORDER BY 1 LIMIT 1").format(
                t=sql.Identifier(store.table)
            )
        ).fetchone()
    assert row is not None
    doc = row[0]
    query = "how are the names and values evaluated"
    vec = embedder.encode([query]).vectors[0]
    hits = store.search(vec, 5, {"document_id": doc}, query=query)
    assert len(hits) == 5 and {h.document_id for h in hits} == {doc}
    assert [h.chunk_id for h in hits] == _reference(pool, store, vec, query, doc, 5)


def test_a_query_of_stop_words_falls_back_to_the_dense_results(store: VectorStore, embedder: Embedder) -> None:
    query = "the of and"
    hybrid = _search(store, embedder, query, k=5)
    dense = _search(store, embedder, query, k=5, mode="dense")
    assert [h.chunk_id for h in hybrid] == [h.chunk_id for h in dense]
    assert all(h.text_score is None for h in hybrid)
    assert _search(store, embedder, query, k=5, mode="text") == []


@pytest.mark.parametrize("query", ['"unbalanced', "-", "or", "with:*", "&|!", "a & (b | !c", "'; DROP TABLE x; --", ""])
def test_query_syntax_characters_never_raise(store: VectorStore, embedder: Embedder, query: str) -> None:
    for mode in ("hybrid", "text", "dense"):
        hits = _search(store, embedder, query or " ", k=3, mode=mode)
        assert isinstance(hits, list)


def test_reingesting_adds_nothing_and_a_changed_document_replaces_exactly_its_chunks(
    pool: ConnectionPool, embedder: Embedder, unique: str
) -> None:
    s = VectorStore(pool, table=f"reingest_{unique}", dimension=embedder.dimension, mode="hybrid")
    docs = [(d, t) for d, t in python_docs_documents() if d in ("pass", "del", "assert")]
    try:
        first = ingest(docs, embedder, s, progress=False, titles=pydoc_title)
        again = ingest(docs, embedder, s, progress=False, titles=pydoc_title)
        assert first.inserted > 0 and again.inserted == 0 and s.count() == first.inserted

        def chunks_of(doc: str) -> list[tuple[str, str]]:
            with pool.connection() as conn:
                return conn.execute(
                    sql.SQL("SELECT chunk_id, text FROM {t} WHERE document_id = %s ORDER BY chunk_index").format(
                        t=sql.Identifier(s.table)
                    ),
                    (doc,),
                ).fetchall()

        others = {d: chunks_of(d) for d in ("del", "assert")}
        changed = [(d, t + "\n\nA sentence added to pass." if d == "pass" else t) for d, t in docs]
        third = ingest(changed, embedder, s, progress=False, titles=pydoc_title)
        new_pass = chunks_of("pass")
        assert third.inserted == len(new_pass) and "A sentence added to pass." in new_pass[-1][1]
        assert {d: chunks_of(d) for d in ("del", "assert")} == others  # untouched
        assert s.count() == sum(len(v) for v in others.values()) + len(new_pass)
    finally:
        with pool.connection() as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(s.table)))
