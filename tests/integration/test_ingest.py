"""Ingesting Python's reference docs into pgvector with the real embedding model."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from workers.adapters.embedding import Embedder, EmbedResult
from workers.adapters.llm_server import LLMServerClient
from workers.adapters.pgvector import VectorStore
from workers.adapters.postgres import open_pool
from workers.retriever.documents import python_docs_documents
from workers.retriever.ingest import chunk_text, ingest
from workers.retriever.prompt import build_prompt, get_template
from workers.settings import EmbeddingSettings, LLMSettings


class CountingEmbedder:
    """The real embedder, counting the texts it is asked to embed."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.tokenizer = inner.tokenizer
        self.max_seq_length = inner.max_seq_length
        self.model_name = inner.model_name
        self.embedded = 0

    def encode(self, texts: list[str]) -> EmbedResult:
        self.embedded += len(texts)
        return self.inner.encode(texts)


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    with Embedder.from_settings(EmbeddingSettings()) as e:
        yield e


@pytest.fixture
def store(stack, unique: str) -> Iterator[VectorStore]:  # type: ignore[no-untyped-def]  # stack: conftest
    pool: ConnectionPool = open_pool(stack.database_url, min_size=1, max_size=2, vector=True)
    s = VectorStore(pool, table=f"docs_{unique}", dimension=384)
    yield s
    with pool.connection() as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(s.table)))
    pool.close()


def test_ingest_python_docs_twice_adds_nothing_the_second_time(embedder: Embedder, store: VectorStore) -> None:
    docs = python_docs_documents()
    counting = CountingEmbedder(embedder)
    first = ingest(docs, counting, store, batch_size=64, progress=False, metadata={"source": "pydoc"})
    print(f"\ningest python docs: {first}")
    assert first.documents == 79
    assert first.chunks > 79
    assert first.inserted == first.chunks and first.skipped == 0
    assert store.count() == first.chunks
    assert counting.embedded == first.chunks

    second = ingest(docs, counting, store, batch_size=64, progress=False, metadata={"source": "pydoc"})
    assert second.chunks == first.chunks
    assert second.inserted == 0 and second.skipped == first.chunks
    assert store.count() == first.chunks
    assert counting.embedded == first.chunks  # nothing embedded again: hashes were checked first

    # One more document: only its chunks are embedded and stored.
    third = ingest(
        [*docs, ("extra", "A new note about the walrus operator := in comprehensions.")],
        counting,
        store,
        progress=False,
    )
    assert third.inserted == 1 and counting.embedded == first.chunks + 1

    # The stored chunks answer a question about the with statement.
    q = embedder.encode(["How does the with statement call __enter__ and __exit__ on a context manager?"])
    hits = store.search(q.vectors[0], 5)
    assert len(hits) == 5
    assert "with" in {h.document_id for h in hits}, [h.document_id for h in hits]
    filtered = store.search(q.vectors[0], 5, {"source": "pydoc", "document_id": ["try", "with"]})
    assert len(filtered) == 5 and {h.document_id for h in filtered} <= {"try", "with"}
    assert filtered[0].document_id == "with"


def test_prompt_fits_the_stack_llm_server(stack, embedder: Embedder) -> None:  # type: ignore[no-untyped-def]
    """Chunks of the docs, the server's /info limits and /tokenize counts: the server accepts the prompt and
    counts no more prompt tokens (chat template included) than build_prompt did."""
    server = LLMServerClient(LLMSettings(url=stack.llm_url))
    limits = server.fetch_info()
    assert limits.max_total_tokens is not None
    docs = dict(python_docs_documents())
    hits = [c for doc in ("with", "try", "for") for c in chunk_text(doc, docs[doc], embedder.tokenizer)][:8]
    max_new_tokens = limits.max_total_tokens - 700  # leaves ~700 prompt tokens: some passages must go
    built = build_prompt(
        "How does the with statement work?",
        hits,
        get_template("default"),
        server.count,
        limits.max_input_tokens,
        limits.max_total_tokens,
        max_new_tokens,
    )
    server.close_sync()
    assert built.prompt_tokens + max_new_tokens <= limits.max_total_tokens
    assert 0 < len(built.passages_kept) < len(hits)
    assert built.passages_kept == hits[: len(built.passages_kept)]
    assert built.passages_dropped == len(hits) - len(built.passages_kept)

    body = {"messages": [m.model_dump() for m in built.messages], "max_tokens": 1}
    resp = httpx.post(f"{stack.llm_url}/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    server_prompt_tokens = resp.json()["usage"]["prompt_tokens"]
    assert server_prompt_tokens <= built.prompt_tokens
    print(f"\nprompt tokens: counted {built.prompt_tokens}, server {server_prompt_tokens}")


def test_cli_ingests_a_mixed_folder_file_by_file_and_exits_1_when_one_is_rejected(
    stack,  # type: ignore[no-untyped-def]  # stack: conftest
    unique: str,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    """Issue 14 #6: a NUL byte, a Latin-1 file and an image in one folder; the good files are ingested."""
    import os
    import subprocess
    import sys

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "pass.txt").write_text("The pass statement is a null operation; nothing happens.", encoding="utf-8")
    (docs / "cafe.txt").write_bytes("Le café était fermé; Hélène est rentrée à pied.".encode("latin-1"))
    (docs / "broken.txt").write_bytes(b"half a text\x00 then binary")
    (docs / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00")
    table = f"mixed_{unique}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env.update({"RAG_DATABASE_URL": stack.database_url, "RAG_RETRIEVER__TABLE": table, "COLUMNS": "200"})
    out = subprocess.run(
        [sys.executable, "-m", "workers.cli", "ingest", str(docs)], env=env, capture_output=True, text=True, timeout=300
    )
    pool: ConnectionPool = open_pool(stack.database_url, min_size=1, max_size=1, vector=True)
    try:
        with pool.connection() as conn:
            rows = conn.execute(
                sql.SQL("SELECT document_id, text FROM {} ORDER BY document_id").format(sql.Identifier(table))
            ).fetchall()
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
    finally:
        pool.close()
    assert out.returncode == 1, out.stdout + out.stderr
    assert [r[0] for r in rows] == ["cafe.txt", "pass.txt"]
    assert "café" in rows[0][1] and "\ufffd" not in rows[0][1]
    lines = {line.split("│")[1].strip(): line for line in out.stdout.splitlines() if line.count("│") >= 5}
    assert "ingested" in lines["pass.txt"] and "ingested" in lines["cafe.txt"] and "cp1252" in lines["cafe.txt"]
    assert "rejected" in lines["broken.txt"] and "NUL" in lines["broken.txt"]
    assert "rejected" in lines["photo.jpg"] and "not a text document (.jpg)" in lines["photo.jpg"]
    assert "documents=2 rejected=2" in out.stdout
