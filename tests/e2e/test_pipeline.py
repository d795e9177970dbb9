"""End to end: the 20 public questions through the running pipeline (three worker processes).

Real Kafka, PostgreSQL + pgvector, the real embedding model and the TGI-compatible server. Prints hit@1 and
hit@5 of the retrieved sources against the listed topics and asserts hit@1 >= 0.95 and hit@5 = 1.00 (the default
hybrid retrieval); each request id is
answered exactly once; the monitor then holds one trace row per request.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg

from devstack.pipeline import Pipeline
from tests.e2e.conftest import responses_in_topic
from workers.client import RagClient
from workers.contracts.messages import Request
from workers.settings import Settings


def test_twenty_public_questions_end_to_end(
    stack: Any,
    pipeline_env: dict[str, str],
    pipeline_settings: Settings,
    questions: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    assert len(questions) == 20
    settings = pipeline_settings
    pipeline = Pipeline(env=pipeline_env, log_dir=tmp_path / "logs")
    pipeline.start()
    try:
        pipeline.wait_ready(timeout_s=240)
        with RagClient(settings) as client:
            reqs = [Request(query=q["q"], top_k=5, generation={"max_new_tokens": 24}) for q in questions]
            t0 = time.perf_counter()
            answers = client.ask_many(reqs, timeout_s=600)
            wall = time.perf_counter() - t0
            assert client.duplicates == 0
        assert set(answers) == {r.request_id for r in reqs}
        statuses = [a.status for a in answers.values()]
        assert statuses.count("ok") == 20, statuses

        hit1 = hit5 = 0
        for req, q in zip(reqs, questions, strict=True):
            docs = [s.document_id for s in answers[req.request_id].sources]
            hit1 += bool(docs[:1] and docs[0] in q["topics"])
            hit5 += any(d in q["topics"] for d in docs[:5])
        stages: dict[str, list[float]] = {}
        for a in answers.values():
            for k, v in a.timings_ms.items():
                stages.setdefault(k, []).append(v)
        medians = {k: sorted(v)[len(v) // 2] for k, v in stages.items()}
        print(f"\nhit@1={hit1 / 20:.2f} hit@5={hit5 / 20:.2f} wall={wall:.1f}s for 20 requests")
        print("median stage timings (ms): " + ", ".join(f"{k}={v:.1f}" for k, v in sorted(medians.items())))
        # the default retrieval (hybrid: HNSW + full text fused by reciprocal rank, chunks with their title)
        assert hit1 / 20 >= 0.95 and hit5 == 20

        # each request id answered exactly once in the responses topic
        produced = responses_in_topic(stack.bootstrap_servers, settings.topics.name("responses"))
        ids = [r.request_id for r in produced]
        assert sorted(ids) == sorted(r.request_id for r in reqs)

        # the monitor holds one trace row per request
        table = pipeline_env["RAG_MONITOR__TABLE"]
        rows = -1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(stack.database_url) as conn:
                    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
                    rows = int(row[0]) if row else 0
            except psycopg.errors.UndefinedTable:
                rows = 0
            if rows >= 20:
                break
            time.sleep(0.5)
        print(f"monitor trace rows: {rows}")
        assert rows == 20
    finally:
        codes = pipeline.stop(timeout_s=40)
    assert all(c == 0 for c in codes.values()), codes
