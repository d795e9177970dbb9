"""B4 vector search: recall@10 and queries/s of the retriever's HNSW query against an exact scan.

Data: ``n`` random 384-dimensional unit vectors drawn around ``n / 100`` random centres (a clustered cloud,
as sentence embeddings are; uniform random points in 384 dimensions have no neighbourhood structure at all),
loaded with binary COPY (``VectorStore.upsert``) and indexed afterwards with pgvector's default HNSW
parameters (m=16, ef_construction=64). Queries are data points plus noise. The HNSW side is
``VectorStore.search`` (the retriever's query, iterative scan, ``ef_search`` per call); the exact side is
``VectorStore.exact_search`` (no index: every distance computed). Recall@10 is measured against numpy's
exact top 10. The table is built once per size and kept in the bench stack.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from bench.core import CpuMeter, Row, Run, Side, alternate
from bench.env import BenchEnv

log = logging.getLogger(__name__)

DIM = 384
K = 10
EF_SEARCHES = (20, 40, 80, 160)
SERVICES = ("postgres",)


def _data(n: int, seed: int = 11) -> np.ndarray:
    """``(n, 384)`` float32 unit vectors around ``n / 100`` random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 100), DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.standard_normal((n, DIM)).astype(np.float32) * np.float32(0.7 / np.sqrt(DIM))
    x = centres[rng.integers(0, len(centres), n)] + noise
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _queries(x: np.ndarray, q: int, seed: int = 12) -> np.ndarray:
    """``q`` unit query vectors: data points plus noise."""
    rng = np.random.default_rng(seed)
    qs = x[rng.integers(0, len(x), q)] + rng.standard_normal((q, DIM)).astype(np.float32) * np.float32(
        0.3 / np.sqrt(DIM)
    )
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    return qs.astype(np.float32)


def _load(env: BenchEnv, table: str, x: np.ndarray) -> None:
    from workers.adapters.interfaces import ChunkRow
    from workers.adapters.pgvector import VectorStore
    from workers.adapters.postgres import open_pool

    # A bigger maintenance_work_mem lets pgvector build the whole graph in memory (much faster).
    url = env.stack.database_url + "?options=-c%20maintenance_work_mem%3D1GB"
    pool = open_pool(url, min_size=1, max_size=1, vector=True)
    try:
        store = VectorStore(pool, table=table, dimension=DIM)
        with pool.connection() as conn:
            exists = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
        if exists and exists[0] is not None and store.count() == len(x):
            return
        t0 = time.monotonic()
        with pool.connection() as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
        store.ensure_schema()
        with pool.connection() as conn:  # load first, index afterwards (a bulk build is faster)
            for (name,) in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = %s AND indexdef ILIKE '%%hnsw%%'", (table,)
            ).fetchall():
                conn.execute(f'DROP INDEX IF EXISTS "{name}"')
        step = 5000
        for i in range(0, len(x), step):
            store.upsert(
                [
                    ChunkRow(f"v{j}", f"d{j // 100}", j % 100, f"v{j}", f"h{j}", 1, x[j])
                    for j in range(i, min(i + step, len(x)))
                ]
            )
        t1 = time.monotonic()
        store.create_indexes()
        with pool.connection() as conn:
            conn.execute(f"ANALYZE {table}")
        log.info("B4 loaded %d vectors in %.1f s (COPY), HNSW built in %.1f s", len(x), t1 - t0, time.monotonic() - t1)
    finally:
        pool.close()


def run(env: BenchEnv, *, quick: bool, runs: int, options: dict[str, Any]) -> list[Row]:
    """Measure B4 and return one row per ``ef_search``."""
    from workers.adapters.pgvector import VectorStore
    from workers.adapters.postgres import open_pool

    n = int(options.get("vectors") or (20_000 if quick else 100_000))
    table = f"bench_vectors_{n}"
    x = _data(n)
    _load(env, table, x)
    n_hnsw, n_exact = (40, 4) if quick else (200, 10)
    qs = _queries(x, 400)
    truth = np.argsort(-(qs @ x.T), axis=1)[:, :K]
    meter = CpuMeter(env.service_pids("postgres"))
    pool = open_pool(env.stack.database_url, min_size=1, max_size=1, vector=True)
    rows: list[Row] = []
    try:
        store = VectorStore(pool, table=table, dimension=DIM)
        cursor = {"hnsw": 0, "exact": 0}

        def hnsw_side(ef: int, found: list[float]) -> Run:
            c0, t0 = meter.total(), time.perf_counter()
            for _ in range(n_hnsw):
                i = cursor["hnsw"] % len(qs)
                cursor["hnsw"] += 1
                hits = store.search(qs[i], K, ef_search=ef)
                got = {int(h.chunk_id[1:]) for h in hits}
                found.append(len(got & set(truth[i].tolist())) / K)
            dt = time.perf_counter() - t0
            return Run(n_hnsw / dt, n_hnsw, meter.total() - c0)

        def exact_side() -> Run:
            c0, t0 = meter.total(), time.perf_counter()
            for _ in range(n_exact):
                i = cursor["exact"] % len(qs)
                cursor["exact"] += 1
                store.exact_search(qs[i], K)
            dt = time.perf_counter() - t0
            return Run(n_exact / dt, n_exact, meter.total() - c0)

        for ef in EF_SEARCHES:
            found: list[float] = []
            a_runs, b_runs = alternate(lambda ef=ef, f=found: hnsw_side(ef, f), exact_side, runs)  # type: ignore[misc]
            recall = float(np.mean(found)) if found else float("nan")
            a = Side(f"HNSW ef={ef}", "q/s", a_runs)
            b = Side("exact scan", "q/s", b_runs)
            row = Row(
                f"B4 ef={ef}",
                "q/s HNSW / exact",
                a,
                b,
                target="recall>=0.95 at >=30x",
                note=f"recall@10={recall:.3f}, n={n}",
            )
            row.ok = recall >= 0.95 and (row.ratio or 0.0) >= 30.0
            rows.append(row)
    finally:
        pool.close()
    return rows
