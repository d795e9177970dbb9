"""End to end: the 20 public questions through the running pipeline (three worker processes).

Real Kafka, PostgreSQL + pgvector, the real embedding model and the TGI-compatible server. Prints hit@1 and
hit@5 of the retrieved sources against the listed topics and asserts hit@5 >= 0.9; each request id is
answered exactly once; the monitor then holds one trace row per request.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from devstack.pipeline import Pipeline
from workers.client import RagClient
from workers.messages import Request, Response
from workers.serde import decode
from workers.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = ROOT.parent / "shared" / "data" / "questions_public.jsonl"
DOCS_TABLE = "e2e_pydocs_chunks"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _questions() -> list[dict[str, Any]]:
    return [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def pydocs_table(stack: Any) -> str:
    """Python's reference docs ingested once per session into a table of their own (via the CLI)."""
    env = {**os.environ, **stack.env(), "RAG_RETRIEVER__TABLE": DOCS_TABLE}
    out = subprocess.run(
        [sys.executable, "-m", "workers.cli", "ingest", "--python-docs"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    print(out.stdout.strip().splitlines()[-1])
    return DOCS_TABLE


@pytest.fixture
def pipeline_env(stack: Any, unique: str, pydocs_table: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment of a pipeline on topics of its own (prefix), with its own groups and trace table."""
    prefix = f"t{unique}."
    env = {
        **stack.env(),
        "RAG_TOPICS__PREFIX": prefix,
        "RAG_RETRIEVER__TABLE": pydocs_table,
        "RAG_MONITOR__TABLE": f"traces_{unique}",
        "RAG_MONITOR__APP_ID": f"monitor-{unique}",
        "RAG_MONITOR__METRICS_PORT": str(_free_port()),
        "RAG_MONITOR__WEB_PORT": str(_free_port()),
        "RAG_WORKER__SHUTDOWN_TIMEOUT_S": "10",
    }
    out = subprocess.run(
        [sys.executable, "-m", "workers.cli", "topics", "apply", "--file", str(ROOT / "topics.yaml")],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    yield env
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    if names:
        for fut in admin.delete_topics(names, operation_timeout=30).values():
            fut.result()


def _responses_in_topic(bootstrap: str, topic: str) -> list[Response]:
    c = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"check-{uuid.uuid4().hex[:6]}", "enable.auto.commit": False}
    )
    meta = c.list_topics(topic, timeout=10).topics[topic]
    tps = [TopicPartition(topic, p, 0) for p in meta.partitions]
    total = sum(c.get_watermark_offsets(tp, timeout=10)[1] for tp in tps)
    c.assign(tps)
    out: list[Response] = []
    deadline = time.monotonic() + 30
    while len(out) < total and time.monotonic() < deadline:
        for m in c.consume(500, timeout=0.5):
            if m.error() is None:
                out.append(decode(m.value(), Response))
    c.close()
    return out


def test_twenty_public_questions_end_to_end(stack: Any, pipeline_env: dict[str, str], tmp_path: Path) -> None:
    questions = _questions()
    assert len(questions) == 20
    pipeline = Pipeline(env=pipeline_env, log_dir=tmp_path / "logs")
    pipeline.start()
    try:
        pipeline.wait_ready(timeout_s=240)
        os.environ.update({k: v for k, v in pipeline_env.items() if k.startswith("RAG_")})
        try:
            settings = load_settings()
        finally:
            for k in pipeline_env:
                if k.startswith("RAG_"):
                    os.environ.pop(k, None)
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
        assert hit5 / 20 >= 0.9

        # each request id answered exactly once in the responses topic
        produced = _responses_in_topic(stack.bootstrap_servers, settings.topics.name("responses"))
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
