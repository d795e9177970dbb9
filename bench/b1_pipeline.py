"""B1 pipeline efficiency: client → Kafka → retriever → generator → server → Kafka → client, divided by the
same client loop calling the server directly with the same prompts.

The server is the simulated engine with a fixed time to first token and time per token and a capacity of
16, so the ratio shows what the pipeline costs the LLM server's throughput, not CPU contention with a
model. Both sides are closed loops of ``c`` callers (c = 1, 4, 16) that each wait for their answer. The
direct side sends the prompts the retriever built during the warm-up (read back from the prompts topic)
through the generator's own LLM client.
"""

from __future__ import annotations

import time
from typing import Any

from bench.core import CpuMeter, Row, Run, Side, alternate
from bench.env import BenchEnv, questions
from bench.flows import direct_loop, pipeline_loop, read_prompts
from workers.client import RagClient

SERVICES = ("kafka", "postgres", "llm")
CONCURRENCY = (1, 4, 16)
TTFT_MS = 100.0
PER_TOKEN_MS = 20.0
TARGETS = {1: 0.93, 4: 0.97, 16: 0.97}


def run(env: BenchEnv, *, quick: bool, runs: int, options: dict[str, Any]) -> list[Row]:
    """Measure B1 at each concurrency; one row each."""
    env.llm_config(ttft_ms=TTFT_MS, per_token_ms=PER_TOKEN_MS, capacity=16, max_concurrent_requests=256)
    env.ensure_corpus()
    new_tokens = 16 if quick else 48
    rounds = 3 if quick else 12  # requests per caller per run
    prefix = env.make_topics()
    settings = env.settings_for(prefix)
    qs = questions()
    rows: list[Row] = []
    with env.workers(prefix, {"retriever": 1, "generator": 1}) as pipe:
        worker_pids = [wp.proc.pid for wp in pipe.procs]
        pipe_meter = CpuMeter([*worker_pids, *env.service_pids("kafka", "llm", "postgres")])
        direct_meter = CpuMeter(env.service_pids("llm"))
        with RagClient(settings) as client:
            pipeline_loop(client, qs, 4, 20, new_tokens)  # warm-up; fills the prompts topic
            prompts = [list(p.messages) for p in read_prompts(settings.kafka.bootstrap_servers, prefix + "rag.prompts")]
            for c in CONCURRENCY:
                n = c * rounds

                def pipe_side(c: int = c, n: int = n) -> Run:
                    c0 = pipe_meter.total()
                    r = pipeline_loop(client, qs, c, n, new_tokens)
                    return Run(r.count / r.wall_s, r.count, pipe_meter.total() - c0, {"tok_s": r.tokens / r.wall_s})

                def direct_side(c: int = c, n: int = n) -> Run:
                    c0 = direct_meter.total()
                    r = direct_loop(settings.llm, prompts, c, n, new_tokens)
                    return Run(r.count / r.wall_s, r.count, direct_meter.total() - c0, {"tok_s": r.tokens / r.wall_s})

                a_runs, b_runs = alternate(pipe_side, direct_side, runs)
                a, b = Side("pipeline", "req/s", a_runs), Side("direct", "req/s", b_runs)
                tok_ratio = a.extra_median("tok_s") / b.extra_median("tok_s")
                row = Row(
                    f"B1 c={c}",
                    "req/s pipeline / direct",
                    a,
                    b,
                    min_ratio=TARGETS[c],
                    note=f"tokens/s ratio {tok_ratio:.3f}; {new_tokens} tok, TTFT {TTFT_MS:.0f} ms, "
                    f"{PER_TOKEN_MS:.0f} ms/tok",
                )
                rows.append(row)
                time.sleep(0.2)
    return rows
