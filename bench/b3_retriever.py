"""B3 retriever efficiency: the retriever worker's throughput against an in-process loop doing the same
embedding and pgvector search with the same batch size; and micro-batched against batch-of-one.

Worker side: a backlog of ``n`` Requests is produced at once to the requests topic of a prefix that has only
a retriever (no generator), and the time from the first send to the ``n``-th Prompt on the prompts topic is
measured (:class:`bench.flows.StageFeed`). The worker decodes, embeds a micro-batch in one forward pass,
searches pgvector per query, builds and encodes the prompt and produces it; its input and output both go
through Kafka. In-process side: the same queries, cut into batches of ``RAG_WORKER__BATCH_MAX`` (32),
embedded with the same :class:`~workers.adapters.embedding.Embedder` settings and searched with the same
:class:`~workers.adapters.pgvector.VectorStore` query (``top_k`` 5, ``ef_search`` 80) as the worker runs it:
``search_many`` of the batch (one connection, one transaction), in this process: no Kafka, no decoding, no
prompt building.

The second row runs two retriever workers on their own topics and compares their throughputs: one with
``batch_max`` 32, one with ``batch_max`` 1 and ``embedding.batch_size`` 1 (every query in a forward pass of
its own: the embedder does not coalesce concurrent calls either), both with 128 messages in flight.
"""

from __future__ import annotations

import time
from typing import Any

from bench.core import CpuMeter, Row, Run, Side, alternate
from bench.env import CORPUS_TABLE, BenchEnv, questions
from bench.flows import StageFeed, request_messages

SERVICES = ("kafka", "postgres", "llm")
BATCH = 32
TARGET_WORKER = 0.90
TARGET_BATCHING = 3.0


def _in_process(env: BenchEnv, queries: list[str], n: int, meter: CpuMeter) -> Any:
    """A callable measuring one in-process run of ``n`` queries (embedding + search, batches of 32)."""
    from workers.adapters.embedding import Embedder
    from workers.adapters.pgvector import VectorStore
    from workers.adapters.postgres import open_pool

    settings = env.settings_for("bench-inproc.")
    embedder = Embedder.from_settings(settings.embedding)
    pool = open_pool(env.stack.database_url, min_size=1, max_size=1, vector=True)
    store = VectorStore(pool, table=CORPUS_TABLE, dimension=embedder.dimension)
    ef, k = settings.retriever.ef_search, settings.retriever.top_k

    def side() -> Run:
        c0, t0 = meter.total(), time.perf_counter()
        for i in range(0, n, BATCH):
            batch = [queries[j % len(queries)] for j in range(i, min(n, i + BATCH))]
            emb = embedder.encode(batch)
            store.search_many(emb.vectors, k, None, ef)
        dt = time.perf_counter() - t0
        return Run(n / dt, n, meter.total() - c0)

    def close() -> None:
        embedder.close()
        pool.close()

    return side, close


def run(env: BenchEnv, *, quick: bool, runs: int, options: dict[str, Any]) -> list[Row]:
    """Measure B3: worker ÷ in-process, and batch 32 ÷ batch 1 (two rows)."""
    env.ensure_corpus()
    n = 160 if quick else 640
    qs = questions()
    boot = env.stack.bootstrap_servers
    p32 = env.make_topics()
    p1 = env.make_topics()
    rows: list[Row] = []
    with (
        env.workers(p32, {"retriever": 1}, RAG_WORKER__BATCH_MAX=str(BATCH)) as w32,
        env.workers(
            p1,
            {"retriever": 1},
            RAG_WORKER__BATCH_MAX="1",
            RAG_EMBEDDING__BATCH_SIZE="1",  # one text per forward pass: no coalescing either
            RAG_WORKER__MAX_IN_FLIGHT=str(4 * BATCH),  # the same depth as the batched worker
        ) as w1,
    ):
        pg = env.service_pids("kafka", "postgres")
        m32 = CpuMeter([w32.procs[0].proc.pid, *pg])
        m1 = CpuMeter([w1.procs[0].proc.pid, *pg])
        m_in = CpuMeter(env.service_pids("postgres"))

        def worker_side(prefix: str, meter: CpuMeter) -> Run:
            feed = StageFeed(boot, prefix + "rag.requests", prefix + "rag.prompts")
            msgs = request_messages(qs, n, 16)
            c0 = meter.total()
            wall, got = feed.run(msgs)
            return Run(got / wall, got, meter.total() - c0)

        inproc, close = _in_process(env, qs, n, m_in)
        try:
            a_runs, b_runs = alternate(lambda: worker_side(p32, m32), inproc, runs)
        finally:
            close()
        a, b = Side("retriever worker b=32", "req/s", a_runs), Side("in-process b=32", "q/s", b_runs)
        row = Row(
            "B3 worker",
            "req/s worker / in-process",
            a,
            b,
            min_ratio=TARGET_WORKER,
            note=f"{n} requests per run; in-process = embed + search only",
        )
        rows.append(row)

        a_runs, b_runs = alternate(lambda: worker_side(p32, m32), lambda: worker_side(p1, m1), runs)
        a, b = Side("retriever worker b=32", "req/s", a_runs), Side("retriever worker b=1", "req/s", b_runs)
        row = Row(
            "B3 batching",
            "req/s batch 32 / batch 1",
            a,
            b,
            min_ratio=TARGET_BATCHING,
            note=f"{n} requests per run, backlog",
        )
        rows.append(row)
    return rows
