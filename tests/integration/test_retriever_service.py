"""The retriever's handler with a 1.2 MB passage that ranks first (issue 3, input 4).

Real embedding model, PostgreSQL + pgvector, the tiny LLM's tokenizer and the LLM server's /info limits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from workers.adapters.embedding import Embedder
from workers.adapters.interfaces import ChunkRow
from workers.adapters.llm_server import LLMServerClient
from workers.adapters.pgvector import VectorStore
from workers.adapters.postgres import open_pool
from workers.adapters.tokenizers import LocalTokenizerCounter
from workers.contracts.messages import DeadLetter, Prompt, Request, Response
from workers.contracts.serde import decode, encode
from workers.retriever.app import build_runner
from workers.retriever.ingest import content_hash
from workers.retriever.stage import RetrieverStage
from workers.settings import EmbeddingSettings, KafkaSettings, LLMSettings, RetrieverSettings, Settings
from workers.stream.records import Incoming

QUERY = "What does the assert statement do when its condition is false?"


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    e = Embedder.from_settings(EmbeddingSettings())
    yield e
    e.close()


def _incoming(req: Request, offset: int) -> Incoming:
    return Incoming(topic="rag.requests", partition=0, offset=offset, key=str(req.request_id).encode(),
                    value=encode(req), headers={"request_id": str(req.request_id)}, timestamp_ms=0)  # fmt: skip


def test_huge_first_ranked_passage_is_capped_then_too_large_output_is_dead_lettered(
    stack: Any, embedder: Embedder, unique: str
) -> None:
    table = f"big_{unique}"
    pool = open_pool(stack.database_url, max_size=2, vector=True)
    server = LLMServerClient(LLMSettings(url=stack.llm_url))
    try:
        store = VectorStore(pool, table=table, dimension=embedder.dimension)
        store.ensure_schema(embedder.model_name)
        huge = ("The assert statement raises AssertionError when its condition is false. " * 17_000)[:1_200_000]
        normal = [
            ("assert", "Assert statements are a convenient way to insert debugging assertions into a program."),
            ("pass", "pass is a null operation: when it is executed, nothing happens."),
            ("del", "Deletion of a name removes the binding of that name from the local or global namespace."),
        ]
        texts = [huge] + [t for _, t in normal]
        vecs = embedder.encode(texts).vectors
        rows = [ChunkRow("huge#0", "huge", 0, huge, content_hash(huge), 300_000, vecs[0])]
        rows += [
            ChunkRow(f"{d}#0", d, 0, t, content_hash(t), 20, v) for (d, t), v in zip(normal, vecs[1:], strict=True)
        ]
        store.upsert(rows)
        assert store.search(embedder.encode([QUERY]).vectors[0], 4)[0].chunk_id == "huge#0"  # it ranks first

        limits = server.fetch_info()
        tok = getattr(stack, "llm_tokenizer_path", "")
        counter = LocalTokenizerCounter(tok) if tok else server
        settings = Settings(retriever=RetrieverSettings(table=table, top_k=4))
        stage = RetrieverStage(settings.retriever, embedder, store, counter, limits)
        service = build_runner(settings, stage, CollectorRegistry())
        req = Request(query=QUERY, generation={"max_new_tokens": 256})
        outs = asyncio.run(service.handle([_incoming(req, 0)]))[0]
        assert len(outs) == 1 and outs[0].topic == settings.topics.name("prompts")
        prompt = decode(outs[0].value, Prompt)
        assert "huge#0" not in [p.chunk_id for p in prompt.passages]  # capped by the token budget
        assert prompt.passages_dropped >= 1
        assert prompt.prompt_tokens + prompt.max_new_tokens <= (limits.max_total_tokens or 0)
        assert len(outs[0].value) < 100_000

        # a producer limit the prompt cannot meet: an error answer and a dead letter, and the worker goes on
        tight = Settings(retriever=RetrieverSettings(table=table, top_k=4), kafka=KafkaSettings(message_max_bytes=600))
        service2 = build_runner(tight, stage, CollectorRegistry())
        outs = asyncio.run(service2.handle([_incoming(req, 1)]))[0]
        by_topic = {o.topic: o for o in outs}
        resp = decode(by_topic[tight.topics.name("responses")].value, Response)
        assert resp.status == "error" and resp.error is not None and resp.error.error_class == "prompt_too_large"
        dl = decode(by_topic[tight.topics.name("dead_letter")].value, DeadLetter)
        assert dl.error_class == "prompt_too_large" and dl.request_id == req.request_id and dl.offset == 1
        again = asyncio.run(service.handle([_incoming(Request(query="What does pass do?"), 2)]))[0]
        assert again[0].topic == settings.topics.name("prompts")
    finally:
        server.close_sync()
        with pool.connection() as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
        pool.close()


def test_unknown_filter_field_is_rejected_and_an_empty_search_answers_no_context_without_the_llm(
    stack: Any, sim_llm: Any, embedder: Embedder, unique: str
) -> None:
    """Issue 14 #5, in the monolith's chain (retriever → generator in memory) on the simulated LLM server: a
    filter on a field the index lacks is answered ``rejected`` naming the field and the known ones; a search that
    finds nothing is answered ``no_context`` with the configured message; neither calls the LLM."""
    from workers.generator.app import build_runner as build_chain
    from workers.generator.stage import GeneratorStage

    table = f"filt_{unique}"
    pool = open_pool(stack.database_url, max_size=2, vector=True)
    server = LLMServerClient(LLMSettings(url=sim_llm.url))
    try:
        store = VectorStore(pool, table=table, dimension=embedder.dimension)
        store.ensure_schema(embedder.model_name)
        docs = [
            ("assert", "Assert statements are a convenient way to insert debugging assertions into a program."),
            ("pass", "pass is a null operation: when it is executed, nothing happens."),
        ]
        vecs = embedder.encode([t for _, t in docs]).vectors
        store.upsert(
            [
                ChunkRow(f"{d}#0", d, 0, t, content_hash(t), 20, v, metadata={"source": "pydoc"})
                for (d, t), v in zip(docs, vecs, strict=True)
            ]
        )
        assert store.filter_fields() == frozenset({"chunk_id", "document_id", "source"})
        settings = Settings(retriever=RetrieverSettings(table=table, top_k=2, no_context_message="Nothing found."))
        limits = server.fetch_info()
        stage = RetrieverStage(settings.retriever, embedder, store, server, limits)
        chain = build_chain(settings, [stage, GeneratorStage(server)], None, CollectorRegistry(), input_model=Request)
        unknown = Request(query=QUERY, filters={"no_such_field": "x"})
        empty = Request(query=QUERY, filters={"document_id": "no-such-document"})
        fine = Request(query=QUERY, filters={"source": "pydoc"}, generation={"max_new_tokens": 4})
        outs = asyncio.run(chain.handle([_incoming(r, i) for i, r in enumerate((unknown, empty, fine))]))
        assert [[o.topic for o in out] for out in outs] == [[settings.topics.name("responses")]] * 3  # no dead letter
        rejected, no_context, answered = (decode(out[0].value, Response) for out in outs)
        assert rejected.request_id == unknown.request_id and rejected.status == "rejected"
        assert rejected.error is not None and rejected.error.error_class == "unknown_filter_field"
        assert "'no_such_field'" in rejected.error.message
        assert "known fields: chunk_id, document_id, source" in rejected.error.message
        assert no_context.request_id == empty.request_id and no_context.status == "no_context"
        assert no_context.answer == "Nothing found." and no_context.sources == [] and no_context.attempts == 0
        assert no_context.provenance is not None and no_context.provenance.index_name == table
        assert answered.status == "ok" and {s.document_id for s in answered.sources} == {"assert", "pass"}
        assert sim_llm.stats()["requests_seen"] == 1  # only the request that found passages reached the LLM
    finally:
        asyncio.run(server.close())
        with pool.connection() as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
        pool.close()
