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
