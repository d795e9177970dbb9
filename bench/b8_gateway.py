"""B8 the gateway: OpenAI-style streams through HTTP → Kafka → retriever → generator → Kafka → HTTP, against
streaming directly from the LLM server; and a load test of 200 streaming clients on two gateway replicas.

Rows (the simulated server: TTFT 50 ms, 10 ms per token, 64 tokens, capacity 256):

* ``B8 tok/s c=N``: streamed tokens/s through the gateway ÷ streamed directly from the server's
  ``/v1/chat/completions``, at N concurrent streams (closed loops). A stream's rate is its tokens after the first
  divided by the time from its first to its last content chunk (the decode rate the client sees); a run's figure is
  the median over its streams. Target >= 0.97.
* ``B8 TTFT+ c=N``: time to first token the gateway and the Kafka hops add, excluding the retrieval stage's own time:
  per stream, the client's time to its first content chunk minus the retrieval work the answer reports
  (``embed_ms + search_ms + prompt_ms``) minus the LLM's own time to first token as the generator measured it
  (``llm_ttft_ms``). p50 and p99 over every stream of the runs; targets p50 <= 15 ms, p99 <= 50 ms.
* ``B8 load``: 200 closed-loop streaming clients for 60 s (``--quick``: 50 clients, 15 s) spread over two replicas:
  answers lost (a stream without ``[DONE]``, an HTTP error), streams whose text differs from the Response of their
  request id on the responses topic (a mixed stream), p50/p99 TTFT, streams/s.

``RAG_GENERATOR__TOKEN_BATCH_MAX`` / ``_MS`` set in the shell are passed to the generator (the batching lever).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.core import CpuMeter, Row, Run, Side, percentile
from bench.env import CORPUS_TABLE, BenchEnv, questions
from devstack.gateway import GatewayPipeline
from workers.contracts.messages import Response
from workers.contracts.serde import decode
from workers.kafka.reader import read_topic
from workers.settings import KafkaSettings

SERVICES = ("kafka", "postgres", "llm")
CONCURRENCY = (1, 16)
TTFT_MS, PER_TOKEN_MS, TOKENS = 50.0, 10.0, 64
TARGET_RATIO, TARGET_P50_MS, TARGET_P99_MS = 0.97, 15.0, 50.0
WORK_KEYS = ("embed_ms", "search_ms", "prompt_ms", "llm_ttft_ms")
#: The generator's token batching settings of this shell (``RAG_GENERATOR__TOKEN_BATCH_MS=20``), passed on.
EXTRA = {k: v for k, v in os.environ.items() if k.startswith("RAG_GENERATOR__TOKEN")}
QUEUE_KEYS = ("retriever_queue_ms", "generator_queue_ms")


@dataclass
class Stream:
    """One streamed answer as the client saw it (times in seconds from its request)."""

    ok: bool = False
    text: str = ""
    first: float | None = None
    last: float | None = None
    chunks: int = 0
    request_id: uuid.UUID | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def rate(self) -> float:
        """Tokens/s from the first to the last content chunk (the filler: one word per token)."""
        n = len(self.text.split())
        if self.first is None or self.last is None or self.last <= self.first or n < 2:
            return float("nan")
        return (n - 1) / (self.last - self.first)

    def added_ttft_ms(self) -> float:
        """Time to first token minus the retrieval work and the LLM's own TTFT (ms)."""
        if self.first is None:
            return float("nan")
        return self.first * 1000.0 - sum(self.timings.get(k, 0.0) for k in WORK_KEYS)


async def read_sse(resp: httpx.Response, t0: float, out: Stream) -> None:
    """Read an OpenAI chunk stream into ``out``."""
    async for line in resp.aiter_lines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()  # TGI writes "data:{...}", OpenAI "data: {...}"
        if payload == "[DONE]":
            out.ok = True
            break
        data = json.loads(payload)
        if "error" in data:
            break
        for choice in data.get("choices", []):
            piece = choice.get("delta", {}).get("content")
            if piece:
                now = time.perf_counter() - t0
                out.first = out.first if out.first is not None else now
                out.last = now
                out.text += piece
                out.chunks += 1
        if "ragstream" in data:
            out.timings = data["ragstream"].get("timings_ms", {})


async def via_gateway(client: httpx.AsyncClient, url: str, key: str, question: str, tokens: int) -> Stream:
    """One streamed answer through a gateway."""
    out = Stream()
    body = {"model": "ragstream", "messages": [{"role": "user", "content": question}], "stream": True,
            "max_tokens": tokens}  # fmt: skip
    t0 = time.perf_counter()
    try:
        async with client.stream(
            "POST", url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as resp:
            out.request_id = uuid.UUID(resp.headers["x-request-id"]) if "x-request-id" in resp.headers else None
            if resp.status_code == 200:
                await read_sse(resp, t0, out)
    except httpx.HTTPError:
        out.ok = False
    return out


async def direct(client: httpx.AsyncClient, llm_url: str, question: str, tokens: int) -> Stream:
    """One streamed answer straight from the LLM server."""
    out = Stream()
    body = {"model": "tgi", "messages": [{"role": "user", "content": question}], "stream": True, "max_tokens": tokens}
    t0 = time.perf_counter()
    async with client.stream("POST", llm_url + "/v1/chat/completions", json=body) as resp:
        await read_sse(resp, t0, out)
    out.ok = True
    return out


async def closed_loops(c: int, n: int, one: Any) -> list[Stream]:
    """``c`` concurrent callers doing ``n`` streams in all."""
    todo = list(range(n))
    got: list[Stream] = []

    async def caller() -> None:
        while todo:
            i = todo.pop()
            got.append(await one(i))

    await asyncio.gather(*(caller() for _ in range(c)))
    return got


def run(env: BenchEnv, *, quick: bool, runs: int, options: dict[str, Any]) -> list[Row]:
    """Measure B8: the tokens/s ratio and the added TTFT at 1 and 16 streams, then the load test."""
    env.llm_config(ttft_ms=TTFT_MS, per_token_ms=PER_TOKEN_MS, capacity=256, max_concurrent_requests=512)
    env.ensure_corpus()
    pipe = GatewayPipeline(
        env={**env.stack.env(), "RAG_LOG_LEVEL": "INFO"},
        log_dir=env.log_dir / "b8",
        gateways=2,
        table=CORPUS_TABLE,
        extra_env={"RAG_GATEWAY__RATE_LIMIT_PER_S": "100000", "RAG_GATEWAY__TIMEOUT_S": "300", **EXTRA},
    )
    pipe.start()
    try:
        return asyncio.run(_measure(env, pipe, quick=quick, runs=runs))
    finally:
        pipe.stop()
        pipe.delete_topics()


async def _measure(env: BenchEnv, pipe: GatewayPipeline, *, quick: bool, runs: int) -> list[Row]:
    qs = questions()
    assert pipe.procs is not None
    meter_gw = CpuMeter([wp.proc.pid for wp in pipe.procs.procs] + env.service_pids("kafka", "llm", "postgres"))
    meter_direct = CpuMeter(env.service_pids("llm"))
    rows: list[Row] = []
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        for c in CONCURRENCY:
            n = c * (2 if quick else 4)
            streams: list[Stream] = []

            async def side_gw(c: int = c, n: int = n, streams: list[Stream] = streams) -> Run:
                c0 = meter_gw.total()
                got = await closed_loops(
                    c, n, lambda i: via_gateway(client, pipe.urls[i % 2], pipe.key, qs[i % len(qs)], TOKENS)
                )
                streams.extend(got)
                rates = [s.rate() for s in got if s.ok]
                return Run(percentile(rates, 50), len(got), meter_gw.total() - c0)

            async def side_direct(c: int = c, n: int = n) -> Run:
                c0 = meter_direct.total()
                got = await closed_loops(c, n, lambda i: direct(client, env.stack.llm_url, qs[i % len(qs)], TOKENS))
                rates = [s.rate() for s in got if s.ok]
                return Run(percentile(rates, 50), len(got), meter_direct.total() - c0, {"ttft": got[0].first or 0})

            a_runs, b_runs = await _alternate(side_gw, side_direct, runs)
            a, b = Side("gateway stream", "tok/s", a_runs), Side("direct stream", "tok/s", b_runs)
            rows.append(Row(f"B8 tok/s c={c}", "tok/s gateway / direct", a, b, min_ratio=TARGET_RATIO,
                            note=f"{TOKENS} tok, TTFT {TTFT_MS:.0f} ms, {PER_TOKEN_MS:.0f} ms/tok, "
                            f"{sum(r.requests for r in a_runs)} streams"))  # fmt: skip
            added = [s.added_ttft_ms() for s in streams[n:] if s.ok]  # after the warm-up run
            p50, p99 = percentile(added, 50), percentile(added, 99)
            ttft = [(s.first or 0) * 1000 for s in streams[n:] if s.ok]
            done = [s for s in streams[n:] if s.ok]
            retrieval = [sum(s.timings.get(k, 0.0) for k in WORK_KEYS[:3]) for s in done]
            queues = {k: percentile([s.timings.get(k, 0.0) for s in done], 50) for k in QUEUE_KEYS}
            rows.append(
                Row(
                    f"B8 TTFT+ c={c}",
                    "added TTFT p50 (ms)",
                    Side("gateway + hops", "ms", [Run(p50, len(added), float("nan"))]),
                    Side("LLM TTFT", "ms", [Run(TTFT_MS, len(added), float("nan"))]),
                    target=f"p50 <= {TARGET_P50_MS:.0f}, p99 <= {TARGET_P99_MS:.0f}",
                    ok=p50 <= TARGET_P50_MS and p99 <= TARGET_P99_MS,
                    note=f"p99 {p99:.1f} ms over {len(added)} streams; client TTFT p50 {percentile(ttft, 50):.0f} ms, "
                    f"retrieval p50 {percentile(retrieval, 50):.1f} ms, queue p50 retriever "
                    f"{queues['retriever_queue_ms']:.1f} ms generator {queues['generator_queue_ms']:.1f} ms",
                )
            )
        rows.append(await _load(env, pipe, client, clients=50 if quick else 200, seconds=15 if quick else 60))
    return rows


async def _alternate(run_a: Any, run_b: Any, runs: int) -> tuple[list[Run], list[Run]]:
    """:func:`bench.core.alternate` for coroutine sides."""
    await run_a()
    await run_b()
    a: list[Run] = []
    b: list[Run] = []
    for i in range(runs):
        if i % 2 == 0:
            a.append(await run_a())
            b.append(await run_b())
        else:
            b.append(await run_b())
            a.append(await run_a())
    return a, b


async def _load(env: BenchEnv, pipe: GatewayPipeline, client: httpx.AsyncClient, clients: int, seconds: float) -> Row:
    """``clients`` closed-loop streaming clients for ``seconds`` over both replicas; checks every answer."""
    qs = questions()
    stop = time.monotonic() + seconds
    got: list[Stream] = []

    async def caller(k: int) -> None:
        i = 0
        while time.monotonic() < stop:
            got.append(await via_gateway(client, pipe.urls[k % 2], pipe.key, qs[(k + i) % len(qs)], 32))
            i += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(clients)))
    wall = time.perf_counter() - t0
    records = read_topic(KafkaSettings(bootstrap_servers=env.stack.bootstrap_servers), pipe.prefix + "rag.responses")
    answers = {r.request_id: r for r in (decode(rec.value, Response) for rec in records)}
    lost = [s for s in got if not s.ok]
    mixed = [s for s in got if s.ok and (s.request_id not in answers or answers[s.request_id].answer != s.text)]
    ttft = [(s.first or 0) * 1000 for s in got if s.ok]
    ok = not lost and not mixed
    note = (f"{clients} clients x {seconds:.0f} s on 2 replicas: {len(got)} streams ({len(got) / wall:.1f}/s), "
            f"lost {len(lost)}, mixed {len(mixed)}, TTFT p50 {percentile(ttft, 50):.0f} ms p99 "
            f"{percentile(ttft, 99):.0f} ms, 32 tok")  # fmt: skip
    side = Side("load", "streams", [Run(float(len(got) - len(lost) - len(mixed)), len(got), float("nan"))])
    ref = Side("sent", "streams", [Run(float(len(got)), len(got), float("nan"))])
    return Row("B8 load", "complete, unmixed / sent", side, ref, target="lost 0, mixed 0", ok=ok, note=note)
