"""``python -m bench.timings``: where a request's time goes, stage by stage, at a given concurrency.

Starts (or reuses, with ``--keep-stack``) the benchmark stack, a retriever and a generator on topics of their
own, and runs ``--concurrency`` closed-loop callers through :class:`workers.client.RagClient` against the
simulated LLM (``--ttft-ms``, ``--per-token-ms``, capacity 16). It prints the throughput, the client's
end-to-end median and, for every key of the answers' ``timings_ms`` (``embed_ms``, ``search_ms``,
``prompt_ms``, ``retriever_queue_ms``, ``generator_queue_ms``, ``llm_ttft_ms``, ``llm_total_ms``, ...), the
median and the maximum in ms. BENCHMARKS.md's "where the time goes" figures for B1 and B2 come from it.
Extra ``NAME=VALUE`` arguments are environment variables for the workers (``RAG_EMBEDDING__TORCH_THREADS=1``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from typing import Any

from bench.env import bench_env, questions
from bench.flows import pipeline_loop
from workers.client import RagClient
from workers.contracts.messages import Request


def main(argv: Sequence[str] | None = None) -> int:
    """Run the measurement and print the table; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m bench.timings", description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=int, default=1, help="closed-loop callers (default 1)")
    p.add_argument("--rounds", type=int, default=10, help="requests per caller (default 10)")
    p.add_argument("--new-tokens", type=int, default=48, help="max_new_tokens per request (default 48)")
    p.add_argument("--ttft-ms", type=float, default=100.0, help="simulated time to first token (default 100)")
    p.add_argument("--per-token-ms", type=float, default=20.0, help="simulated time per token (default 20)")
    p.add_argument("--keep-stack", action="store_true", help="leave the benchmark stack running")
    p.add_argument("env", nargs="*", help="NAME=VALUE environment variables for the workers")
    args = p.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.env)
    with bench_env(("kafka", "postgres", "llm"), keep_stack=args.keep_stack) as env:
        env.llm_config(ttft_ms=args.ttft_ms, per_token_ms=args.per_token_ms, capacity=16, max_concurrent_requests=256)
        env.ensure_corpus()
        prefix = env.make_topics()
        settings = env.settings_for(prefix)
        qs = questions()
        with env.workers(prefix, {"retriever": 1, "generator": 1}, **extra), RagClient(settings) as client:
            pipeline_loop(client, qs, 4, 20, args.new_tokens)  # warm-up
            out: list[tuple[float, dict[str, float]]] = []

            async def caller(i: int) -> None:
                for r in range(args.rounds):
                    req = Request(query=qs[(i + r) % len(qs)], top_k=5, generation={"max_new_tokens": args.new_tokens})
                    t0 = time.perf_counter()
                    resp = await client.ask_async(req, timeout_s=120)
                    out.append(((time.perf_counter() - t0) * 1000.0, dict(resp.timings_ms)))

            async def run_all() -> None:
                await asyncio.gather(*(caller(i) for i in range(args.concurrency)))

            t0 = time.perf_counter()
            asyncio.run(run_all())
            wall = time.perf_counter() - t0
    print(f"concurrency {args.concurrency}: {len(out) / wall:.2f} req/s, {len(out)} requests")
    print(f"{'client end-to-end':24s} median {statistics.median(x[0] for x in out):8.1f} ms")
    keys: set[str] = {k for _, t in out for k in t}
    for key in sorted(keys):
        vals: list[Any] = [t[key] for _, t in out if key in t]
        print(f"{key:24s} median {statistics.median(vals):8.1f} ms   max {max(vals):8.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
