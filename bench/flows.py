"""Load generators shared by the pipeline benchmarks: closed loops through Kafka or straight to the server."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

from confluent_kafka import Consumer, TopicPartition

from workers.client import RagClient
from workers.generator.llm import LLMClient
from workers.messages import ChatMessage, GenerationParams, Prompt, Request, Response
from workers.serde import decode
from workers.settings import LLMSettings


@dataclass
class LoopResult:
    """What one closed-loop run completed.

    Attributes:
        wall_s: seconds from the first send to the last answer.
        latencies_s: per request, seconds from send to answer as the caller saw it.
        tokens: output tokens generated in all.
        responses: the responses (pipeline runs only).
    """

    wall_s: float
    latencies_s: list[float] = field(default_factory=list)
    tokens: int = 0
    responses: list[Response] = field(default_factory=list)

    @property
    def count(self) -> int:
        """Answers received."""
        return len(self.latencies_s)


async def _closed_loop_pipeline(
    client: RagClient, queries: list[str], concurrency: int, n: int, max_new_tokens: int
) -> LoopResult:
    left = [n]
    res = LoopResult(0.0)

    async def worker(w: int) -> None:
        i = w
        while left[0] > 0:
            left[0] -= 1
            req = Request(query=queries[i % len(queries)], top_k=5, generation={"max_new_tokens": max_new_tokens})
            i += concurrency
            t0 = time.perf_counter()
            resp = await client.ask_async(req, timeout_s=120)
            res.latencies_s.append(time.perf_counter() - t0)
            res.tokens += resp.usage.completion_tokens
            res.responses.append(resp)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    res.wall_s = time.perf_counter() - t0
    return res


def pipeline_loop(client: RagClient, queries: list[str], concurrency: int, n: int, max_new_tokens: int) -> LoopResult:
    """``n`` requests through the pipeline by ``concurrency`` callers that each wait for their answer."""
    return asyncio.run(_closed_loop_pipeline(client, queries, concurrency, n, max_new_tokens))


async def _closed_loop_direct(
    settings: LLMSettings, prompts: list[list[ChatMessage]], concurrency: int, n: int, max_new_tokens: int
) -> LoopResult:
    llm = LLMClient(settings)
    left = [n]
    res = LoopResult(0.0)
    params = GenerationParams(max_new_tokens=max_new_tokens)

    async def worker(w: int) -> None:
        i = w
        while left[0] > 0:
            left[0] -= 1
            msgs = prompts[i % len(prompts)]
            i += concurrency
            t0 = time.perf_counter()
            gen = await llm.generate(msgs, params)
            res.latencies_s.append(time.perf_counter() - t0)
            res.tokens += gen.completion_tokens

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    res.wall_s = time.perf_counter() - t0
    return res


def direct_loop(
    settings: LLMSettings, prompts: list[list[ChatMessage]], concurrency: int, n: int, max_new_tokens: int
) -> LoopResult:
    """``n`` generations straight to the server (the generator's LLM client, same settings) with the same
    prompts and the same closed loop."""
    return asyncio.run(_closed_loop_direct(settings, prompts, concurrency, n, max_new_tokens))


def read_prompts(bootstrap: str, topic: str, limit: int = 200, timeout_s: float = 20.0) -> list[Prompt]:
    """Up to ``limit`` Prompts from the start of ``topic`` (what the retriever produced)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:6]}"})
    try:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        c.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        out: list[Prompt] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < limit and time.monotonic() < deadline:
            msgs = c.consume(500, timeout=0.5)
            if not msgs and out:
                break
            for m in msgs:
                if m.error() is None:
                    out.append(decode(m.value(), Prompt))
        return out[:limit]
    finally:
        c.close()
