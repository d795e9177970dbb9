"""B7 generator saturation: the adaptive in-flight limit against the best fixed one found by a sweep.

The simulated server generates at most ``capacity`` requests at once (12) and answers 429 above
``max_concurrent_requests`` (24); the generator is told neither. Many closed-loop callers (48, more than any
limit) keep the generator's LLM client (:class:`workers.adapters.llm_server.LLMServerClient`, the code the generator
worker calls, with its retries) saturated for a fixed time; the figure is completed answers per second. A
sweep over fixed limits picks the best one; then the adaptive client (a fresh limiter every run, so each run
includes finding the limit) and the best fixed one alternate.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.core import CpuMeter, Row, Run, Side, alternate
from bench.env import BenchEnv
from workers.adapters.llm_server import LLMServerClient
from workers.contracts.errors import LLMRetryableError
from workers.contracts.messages import ChatMessage, GenerationParams
from workers.settings import LLMSettings

SERVICES = ("llm",)
CAPACITY = 12
MAX_CONCURRENT = 24
CALLERS = 48
TTFT_MS = 50.0
PER_TOKEN_MS = 20.0
NEW_TOKENS = 8

_MESSAGES = [
    ChatMessage(role="system", content="Answer from the passages."),
    ChatMessage(role="user", content=" ".join(["passage text about the with statement"] * 40) + " Question?"),
]


async def _drive(url: str, adaptive: bool, limit: int, duration_s: float) -> tuple[int, int]:
    settings = LLMSettings(url=url, adaptive=adaptive, max_in_flight=limit, timeout_s=30)
    llm = LLMServerClient(settings)
    params = GenerationParams(max_new_tokens=NEW_TOKENS)
    done = failed = 0
    stop_at = time.perf_counter() + duration_s

    async def caller() -> None:
        nonlocal done, failed
        while time.perf_counter() < stop_at:
            try:
                await llm.generate(list(_MESSAGES), params)
                done += 1
            except LLMRetryableError:
                failed += 1

    await asyncio.gather(*(caller() for _ in range(CALLERS)))
    return done, failed


def run(env: BenchEnv, *, quick: bool, runs: int, options: dict[str, Any]) -> list[Row]:
    """Measure B7: one row (adaptive ÷ best fixed)."""
    env.llm_config(
        ttft_ms=TTFT_MS, per_token_ms=PER_TOKEN_MS, capacity=CAPACITY, max_concurrent_requests=MAX_CONCURRENT
    )
    duration = 3.0 if quick else 15.0
    meter = CpuMeter(env.service_pids("llm"))
    url = env.stack.llm_url

    def side(adaptive: bool, limit: int) -> Run:
        c0 = meter.total()
        t0 = time.perf_counter()
        done, failed = asyncio.run(_drive(url, adaptive, limit, duration))
        dt = time.perf_counter() - t0  # includes draining the last calls
        return Run(done / dt, done, meter.total() - c0, {"failed": float(failed)})

    sweep_limits = (6, 12, 16, 24, 32, 48) if quick else (4, 8, 12, 16, 20, 24, 32, 48)
    side(False, CAPACITY)  # warm-up of the server and the client libraries
    sweep = {lim: side(False, lim).value for lim in sweep_limits}
    best = max(sweep, key=lambda k: sweep[k])
    a_runs, b_runs = alternate(lambda: side(True, 256), lambda: side(False, best), runs, warmup=False)
    a = Side("adaptive (ceiling 256)", "ans/s", a_runs)
    b = Side(f"best fixed={best}", "ans/s", b_runs)
    sweep_txt = ", ".join(f"{k}:{v:.1f}" for k, v in sweep.items())
    row = Row(
        "B7",
        "answers/s adaptive / best fixed",
        a,
        b,
        min_ratio=0.95,
        note=f"capacity {CAPACITY}, 429 above {MAX_CONCURRENT}; sweep {sweep_txt}",
    )
    return [row]
