"""B5 monitor sink: the monitor's write path against a plain psycopg ``executemany``; and the pipeline's
throughput with the monitor running against without it.

Sink row: ``n`` synthetic traces (a Request, its Prompt with five ~800-character passages and the chat
messages, its Response), decoded models turned into trace updates by :mod:`workers.monitor.join` as the
monitor does. Side A is :meth:`TraceRecorder.write_batch` on batches of the three events of ``BATCH``
requests (one transaction each: lock, resolve, COPY into the staging table, one merge statement). Side B
writes the very same rows (the recorder's own row tuples, built before the clock starts) into a table of the
same schema with ``cursor.executemany`` of a plain ``INSERT ... ON CONFLICT (request_id) DO UPDATE`` (every
column from ``EXCLUDED``), one transaction per batch. Both write new rows; the figure is rows/s.

Pipeline row: two pipelines (retriever + generator) on their own topics, one of them with a monitor, fed
the same backlog of requests in turn; the figure is answers/s (B1's simulated server: TTFT 100 ms, 20 ms
per token, capacity 16).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import sql

from bench.core import CpuMeter, Row, Run, Side, alternate
from bench.env import BenchEnv, questions
from bench.flows import burst
from workers.client import RagClient
from workers.contracts.messages import ChatMessage, Passage, Prompt, Request, Response, Source, Usage
from workers.monitor.join import from_prompt, from_request, from_response
from workers.monitor.trace import KINDS, OWNED_COLUMNS, KafkaCoords, TraceUpdate

SERVICES = ("kafka", "postgres", "llm")
BATCH = 500
TARGET_SINK = 3.0
TARGET_PIPELINE = 0.97
_TEXT = "The with statement is used to wrap the execution of a block with methods defined by a context manager. "


def _events(n: int) -> list[list[TraceUpdate]]:
    """``n`` traces as the monitor's updates, three per request (request, prompt, response)."""
    out: list[list[TraceUpdate]] = []
    base = datetime.now(UTC)
    for i in range(n):
        req = Request(query=f"What does the with statement do? ({i})", top_k=5, created_at=base)
        passages = [
            Passage(chunk_id=f"doc{j}#{i % 7}", document_id=f"doc{j}", score=0.8 - j / 20, text=_TEXT * 8, rank=j)
            for j in range(5)
        ]
        messages = [
            ChatMessage(role="system", content="Answer from the passages only."),
            ChatMessage(role="user", content="\n\n".join(p.text for p in passages) + "\n\nQuestion: " + req.query),
        ]
        prompt = Prompt(
            request_id=req.request_id,
            request=req,
            passages=passages,
            messages=messages,
            template_id="default",
            template_hash="0" * 16,
            prompt_tokens=900,
            max_new_tokens=48,
            created_at=base + timedelta(milliseconds=20),
            timings_ms={"embed_ms": 4.0, "search_ms": 2.0, "prompt_ms": 3.0, "retriever_queue_ms": 1.0},
        )
        resp = Response(
            request_id=req.request_id,
            answer="It wraps a block with a context manager's enter and exit methods. " * 3,
            finish_reason="length",
            usage=Usage(prompt_tokens=900, completion_tokens=48, total_tokens=948),
            model_id="simulated",
            sources=[Source(document_id=p.document_id, chunk_id=p.chunk_id, score=p.score) for p in passages],
            timings_ms={**prompt.timings_ms, "llm_ttft_ms": 100.0, "llm_total_ms": 1000.0, "end_to_end_ms": 1030.0},
            created_at=base + timedelta(milliseconds=1030),
        )
        out.append(
            [
                from_request(req, KafkaCoords("rag.requests", i % 12, i)),
                from_prompt(prompt, KafkaCoords("rag.prompts", i % 12, i)),
                from_response(resp, KafkaCoords("rag.responses", i % 12, i)),
            ]
        )
    return out


def _sink_rows(env: BenchEnv, quick: bool, runs: int) -> Row:
    from psycopg_pool import ConnectionPool

    from workers.adapters.traces import TraceRecorder

    n = 1000 if quick else 5000
    tag = uuid.uuid4().hex[:6]
    pool = ConnectionPool(env.stack.database_url, min_size=1, max_size=2, open=True)
    rec = TraceRecorder(pool, table=f"bench_traces_{tag}")
    ref = TraceRecorder(pool, table=f"bench_traces_ref_{tag}")
    meter = CpuMeter(env.service_pids("postgres"))
    cols = [
        "request_id",
        *(c for k in KINDS for c in OWNED_COLUMNS[k]),
        "kafka_topic",
        "kafka_partition",
        "kafka_offset",
    ]
    plain = sql.SQL("INSERT INTO {t} ({cols}) VALUES ({vals}) ON CONFLICT (request_id) DO UPDATE SET {sets}").format(
        t=sql.Identifier(ref.table),
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in cols),
        vals=sql.SQL(", ").join(sql.Placeholder() for _ in cols),
        sets=sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in cols[1:]),
    )
    try:
        rec.ensure_schema()
        ref.ensure_schema()

        def recorder_side() -> Run:
            traces = _events(n)
            c0, t0 = meter.total(), time.perf_counter()
            changed = 0
            for i in range(0, n, BATCH):
                changed += rec.write_batch([u for t in traces[i : i + BATCH] for u in t], ()).rows_changed
            dt = time.perf_counter() - t0
            return Run(changed / dt, changed, meter.total() - c0)

        def executemany_side() -> Run:
            traces = _events(n)
            # The same rows the recorder writes (its private row builder: same values, same order).
            rows = [TraceRecorder._row(t[0].merge(t[1]).merge(t[2])) for t in traces]
            c0, t0 = meter.total(), time.perf_counter()
            for i in range(0, n, BATCH):
                with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                    cur.executemany(plain, rows[i : i + BATCH])
            dt = time.perf_counter() - t0
            return Run(n / dt, n, meter.total() - c0)

        a_runs, b_runs = alternate(recorder_side, executemany_side, runs)
    finally:
        rec.drop()
        ref.drop()
        pool.close()
    a, b = Side("monitor write path", "rows/s", a_runs), Side("executemany upsert", "rows/s", b_runs)
    row = Row(
        "B5 sink",
        "trace rows/s recorder / executemany",
        a,
        b,
        min_ratio=TARGET_SINK,
        note=f"{n} new traces per run (3 events each), {BATCH} traces per transaction; A includes join + resolve",
    )
    return row


def _pipeline_row(env: BenchEnv, quick: bool, runs: int) -> Row:
    env.llm_config(ttft_ms=100.0, per_token_ms=20.0, capacity=16, max_concurrent_requests=256)
    env.ensure_corpus()
    n = 80 if quick else 400
    new_tokens = 16
    qs = questions()
    with_mon, without = env.make_topics(), env.make_topics()
    services = env.service_pids("kafka", "llm", "postgres")
    with (
        env.workers(with_mon, {"retriever": 1, "generator": 1, "monitor": 1}) as p_with,
        env.workers(without, {"retriever": 1, "generator": 1}) as p_without,
        RagClient(env.settings_for(with_mon)) as c_with,
        RagClient(env.settings_for(without)) as c_without,
    ):
        m_with = CpuMeter([*(w.proc.pid for w in p_with.procs), *services])
        m_without = CpuMeter([*(w.proc.pid for w in p_without.procs), *services])

        def side(client: RagClient, meter: CpuMeter) -> Run:
            c0 = meter.total()
            r = burst(client, qs, n, new_tokens)
            return Run(r.count / r.wall_s, r.count, meter.total() - c0)

        a_runs, b_runs = alternate(lambda: side(c_with, m_with), lambda: side(c_without, m_without), runs)
    a, b = Side("with monitor", "req/s", a_runs), Side("without monitor", "req/s", b_runs)
    row = Row(
        "B5 pipeline",
        "req/s with monitor / without",
        a,
        b,
        min_ratio=TARGET_PIPELINE,
        note=f"backlog of {n} requests per run, {new_tokens} tok, TTFT 100 ms, 20 ms/tok, capacity 16",
    )
    return row


def run(env: BenchEnv, *, quick: bool, runs: int, options: dict[str, Any]) -> list[Row]:
    """Measure B5: the sink row and the pipeline row."""
    return [_sink_rows(env, quick, runs), _pipeline_row(env, quick, runs)]
