"""B6 composition: the pipeline's maximum sustainable throughput divided by the smallest of its stages'
maximums, each stage measured alone with its own Kafka input.

Three sets of topics, each with its own workers: a retriever alone (fed Requests, counted on its prompts
topic), a generator alone (fed the Prompts the retriever built, with fresh request ids, counted on its
responses topic) and the whole pipeline (fed Requests through :class:`RagClient`, counted as answers).
Each run feeds a backlog of ``n`` messages at once, so a figure is the stage's (or pipeline's) maximum rate
in messages/s. Side B of a run is the smaller of the two stage runs measured back to back. The simulated
server is B1's (TTFT 100 ms, 20 ms per token, capacity 16).
"""

from __future__ import annotations

from typing import Any

from bench.core import CpuMeter, Row, Run, Side, alternate
from bench.env import BenchEnv, questions
from bench.flows import StageFeed, burst, prompt_messages, read_prompts, request_messages
from workers.client import RagClient

SERVICES = ("kafka", "postgres", "llm")
NEW_TOKENS = 16
TARGET = 0.90


def run(env: BenchEnv, *, quick: bool, runs: int, options: dict[str, Any]) -> list[Row]:
    """Measure B6: one row (pipeline ÷ slowest stage alone)."""
    env.llm_config(ttft_ms=100.0, per_token_ms=20.0, capacity=16, max_concurrent_requests=256)
    env.ensure_corpus()
    n = 80 if quick else 400
    qs = questions()
    boot = env.stack.bootstrap_servers
    p_ret, p_gen, p_pipe = env.make_topics(), env.make_topics(), env.make_topics()
    services = env.service_pids("kafka", "llm", "postgres")
    with (
        env.workers(p_ret, {"retriever": 1}) as w_ret,
        env.workers(p_gen, {"generator": 1}) as w_gen,
        env.workers(p_pipe, {"retriever": 1, "generator": 1}) as w_pipe,
        RagClient(env.settings_for(p_pipe)) as client,
    ):
        m_ret = CpuMeter([w_ret.procs[0].proc.pid, *services])
        m_gen = CpuMeter([w_gen.procs[0].proc.pid, *services])
        m_pipe = CpuMeter([*(w.proc.pid for w in w_pipe.procs), *services])
        ret_feed = StageFeed(boot, p_ret + "rag.requests", p_ret + "rag.prompts")
        gen_feed = StageFeed(boot, p_gen + "rag.prompts", p_gen + "rag.responses")
        ret_feed.run(request_messages(qs, 40, NEW_TOKENS))  # warm-up; fills the prompts topic
        prompts = read_prompts(boot, p_ret + "rag.prompts")
        stage_rates: dict[str, list[float]] = {"retriever": [], "generator": []}

        def pipeline_side() -> Run:
            c0 = m_pipe.total()
            r = burst(client, qs, n, NEW_TOKENS)
            return Run(r.count / r.wall_s, r.count, m_pipe.total() - c0)

        def stages_side() -> Run:
            c0 = m_ret.total()
            wall, got = ret_feed.run(request_messages(qs, n, NEW_TOKENS))
            ret = Run(got / wall, got, m_ret.total() - c0)
            c0 = m_gen.total()
            wall, got = gen_feed.run(prompt_messages(prompts, n))
            gen = Run(got / wall, got, m_gen.total() - c0)
            stage_rates["retriever"].append(ret.value)
            stage_rates["generator"].append(gen.value)
            slow = min(ret, gen, key=lambda r: r.value)
            return Run(slow.value, slow.requests, slow.cpu_s, {"retriever": ret.value, "generator": gen.value})

        a_runs, b_runs = alternate(pipeline_side, stages_side, runs)
    a, b = Side("pipeline", "req/s", a_runs), Side("slowest stage alone", "req/s", b_runs)
    row = Row(
        "B6",
        "req/s pipeline / min(stage alone)",
        a,
        b,
        min_ratio=TARGET,
        note=f"retriever alone {b.extra_median('retriever'):.1f} req/s, generator alone "
        f"{b.extra_median('generator'):.1f} req/s; backlog of {n}, {NEW_TOKENS} tok, TTFT 100 ms, 20 ms/tok, "
        "capacity 16",
    )
    return [row]
