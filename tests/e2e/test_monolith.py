"""End to end: the monolith shape (``ragstream run monolith``), and a switch from it to the split shape.

Real Kafka, PostgreSQL + pgvector, the real embedding model and the TGI-compatible servers; the workers run as
``ragstream run <worker>`` processes (devstack.pipeline), as in production.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from devstack.pipeline import Pipeline
from tests.e2e.conftest import free_port, responses_in_topic, settings_for
from workers.client import RagClient
from workers.contracts.messages import Request


def _trace_rows(database_url: str, table: str, want: int, timeout_s: float = 60.0) -> tuple[int, int]:
    """(rows, rows with a response) of a trace table, once ``want`` answered rows are there or after the timeout."""
    rows = answered = 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(database_url) as conn:
                row = conn.execute(f"SELECT count(*), count(response_status) FROM {table}").fetchone()
                rows, answered = (int(row[0]), int(row[1])) if row else (0, 0)
        except psycopg.errors.UndefinedTable:
            rows = answered = 0
        if answered >= want:
            break
        time.sleep(0.5)
    return rows, answered


def test_monolith_answers_the_twenty_public_questions_with_twenty_trace_rows(
    stack: Any, pipeline_env: dict[str, str], questions: list[dict[str, Any]], tmp_path: Path
) -> None:
    settings = settings_for(pipeline_env)
    mono = Pipeline(env=pipeline_env, log_dir=tmp_path / "logs", replicas={"monolith": 1})
    mono.start()
    try:
        mono.wait_ready(timeout_s=240)
        with RagClient(settings) as client:
            reqs = [Request(query=q["q"], top_k=5, generation={"max_new_tokens": 24}) for q in questions]
            t0 = time.perf_counter()
            answers = client.ask_many(reqs, timeout_s=600)
            wall = time.perf_counter() - t0
            assert client.duplicates == 0
        assert [answers[r.request_id].status for r in reqs].count("ok") == 20
        hit5 = sum(
            any(s.document_id in q["topics"] for s in answers[r.request_id].sources[:5])
            for r, q in zip(reqs, questions, strict=True)
        )
        timings = {k for a in answers.values() for k in a.timings_ms}
        print(f"\nmonolith: hit@5={hit5 / 20:.2f} wall={wall:.1f}s for 20 requests; stages {sorted(timings)}")
        assert hit5 / 20 >= 0.9
        # the same stages as the split shape (retrieval and generation timings), without the prompts-topic hop
        assert {"embed_ms", "search_ms", "prompt_ms", "llm_ttft_ms", "llm_total_ms", "end_to_end_ms"} <= timings
        produced = responses_in_topic(stack.bootstrap_servers, settings.topics.name("responses"))
        assert sorted(r.request_id for r in produced) == sorted(r.request_id for r in reqs)
        assert responses_in_topic(stack.bootstrap_servers, settings.topics.name("prompts")) == []
        # the monitor stage ran in-process: one trace row per request, with its prompt and answer
        rows, answered = _trace_rows(stack.database_url, pipeline_env["RAG_MONITOR__TABLE"], 20)
        with psycopg.connect(stack.database_url) as conn:
            row = conn.execute(
                f"SELECT count(*) FROM {pipeline_env['RAG_MONITOR__TABLE']} "  # noqa: S608 - test-made table name
                "WHERE prompt_sig IS NOT NULL AND request_sig IS NOT NULL AND response_status = 'ok'"
            ).fetchone()
        complete = int(row[0]) if row else 0
        print(f"monolith trace rows: {rows} (answered {answered}, with request, prompt and answer {complete})")
        assert rows == 20 and complete == 20
    finally:
        codes = mono.stop(timeout_s=40)
    assert all(c == 0 for c in codes.values()), codes


def test_switch_from_monolith_to_split_answers_every_request_once(
    stack: Any, pipeline_env: dict[str, str], sim_llm: Any, tmp_path: Path
) -> None:
    """Start the monolith, send 50, stop it mid-stream, start retriever + generator (+ monitor): all 50 answered
    once, none generated twice (the simulated server counts its generations)."""
    sim_llm.reset(ttft_ms=40, per_token_ms=25, capacity=4)
    env = {**pipeline_env, "RAG_LLM__URL": sim_llm.url}
    settings = settings_for(env)
    mono = Pipeline(env=env, log_dir=tmp_path / "mono", replicas={"monolith": 1})
    split = Pipeline(env=env, log_dir=tmp_path / "split", replicas={"retriever": 1, "generator": 1, "monitor": 1})
    mono.start()
    try:
        mono.wait_ready(timeout_s=240)
        with RagClient(settings) as client:
            reqs = [
                Request(query=f"How does statement number {i} work?", generation={"max_new_tokens": 8})
                for i in range(50)
            ]
            futures = {r.request_id: client.submit(r) for r in reqs}
            client.flush()
            deadline = time.monotonic() + 120
            while sum(f.done() for f in futures.values()) < 8 and time.monotonic() < deadline:
                time.sleep(0.05)
            by_monolith = sum(f.done() for f in futures.values())
            codes = mono.stop(timeout_s=40)
            assert all(c == 0 for c in codes.values()), codes
            assert 0 < by_monolith < 50, f"the monolith answered {by_monolith} before it was stopped"
            split.start()
            split.wait_ready(timeout_s=240)
            deadline = time.monotonic() + 180
            while not all(f.done() for f in futures.values()) and time.monotonic() < deadline:
                time.sleep(0.1)
            answers = {rid: f.result(timeout=0) for rid, f in futures.items()}
            duplicates = client.duplicates
        statuses = [a.status for a in answers.values()]
        stats = sim_llm.stats()
        print(
            f"\nswitch: {by_monolith} answered by the monolith before it stopped, {50 - by_monolith} after the "
            f"switch; duplicates dropped by the client {duplicates}; generations {stats.get('completed')}"
        )
        assert statuses.count("ok") == 50, statuses
        assert stats["completed"] == 50  # no request generated twice
        rows, answered = _trace_rows(stack.database_url, env["RAG_MONITOR__TABLE"], 50)
        assert (rows, answered) == (50, 50)
    finally:
        mono.stop(timeout_s=20)
        split.stop(timeout_s=40)


def test_monolith_hosting_the_model_in_process_needs_no_llm_server(
    stack: Any, pipeline_env: dict[str, str], questions: list[dict[str, Any]], tmp_path: Path
) -> None:
    """``RAG_LLM__ENGINE=simulated``: the engine runs inside the monolith (no server at ``RAG_LLM__URL``); its busy
    time and generations are on the monolith's /metrics."""
    port = free_port()
    env = {
        **pipeline_env,
        "RAG_LLM__URL": "http://127.0.0.1:9",  # nothing listens there: every LLM call stays in the process
        "RAG_LLM__ENGINE": "simulated",
        "RAG_LLM__ENGINE_ARGS": "--ttft-ms 20 --per-token-ms 5 --capacity 8",
        "RAG_RETRIEVER__LLM_TOKENIZER": "",
        "RAG_WORKER__METRICS_PORT": str(port),
    }
    settings = settings_for(env)
    mono = Pipeline(env=env, log_dir=tmp_path / "logs", replicas={"monolith": 1})
    mono.start()
    try:
        mono.wait_ready(timeout_s=240)
        with RagClient(settings) as client:
            reqs = [Request(query=q["q"], generation={"max_new_tokens": 6}) for q in questions[:5]]
            answers = client.ask_many(reqs, timeout_s=180)
        assert [a.status for a in answers.values()] == ["ok"] * 5
        assert all(a.model_id and a.provenance and a.provenance.llm_api == "engine" for a in answers.values())
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        values = {
            line.split()[0]: float(line.split()[1])
            for line in metrics.splitlines()
            if line.startswith(("engine_busy_seconds_total", "engine_generations_total"))
        }
        print(f"\nin-process engine: {values}")
        assert values["engine_generations_total"] == 5 and values["engine_busy_seconds_total"] > 0
    finally:
        codes = mono.stop(timeout_s=40)
    assert all(c == 0 for c in codes.values()), codes
