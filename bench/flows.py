"""Load generators shared by the pipeline benchmarks: closed loops through Kafka or straight to the server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from workers.adapters.llm_server import LLMServerClient
from workers.client import RagClient
from workers.contracts.messages import ChatMessage, GenerationParams, Prompt, Request, Response
from workers.contracts.serde import decode, encode
from workers.kafka.producer import KafkaProducer
from workers.kafka.reader import assign_at, consume_available, read_topic, reader
from workers.settings import KafkaSettings, LLMSettings


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
    llm = LLMServerClient(settings)
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
    records = read_topic(KafkaSettings(bootstrap_servers=bootstrap), topic, timeout_s=timeout_s)
    return [decode(r.value, Prompt) for r in records[:limit]]


def _completion_times(futs: list[concurrent.futures.Future[Response]]) -> list[float]:
    """Arm each future to record ``perf_counter`` at its resolution; returns the list being filled."""
    done_at = [float("nan")] * len(futs)

    def arm(i: int) -> None:
        def cb(_f: concurrent.futures.Future[Response]) -> None:
            done_at[i] = time.perf_counter()

        futs[i].add_done_callback(cb)

    for i in range(len(futs)):
        arm(i)
    return done_at


def _stamp(done_at: list[float], i: int) -> Callable[[concurrent.futures.Future[Response]], None]:
    """A done-callback writing ``perf_counter`` into ``done_at[i]``."""

    def cb(_f: concurrent.futures.Future[Response]) -> None:
        done_at[i] = time.perf_counter()

    return cb


def burst(client: RagClient, queries: list[str], n: int, max_new_tokens: int, timeout_s: float = 300.0) -> LoopResult:
    """``n`` requests produced at once (a backlog), then waited for: the pipeline's maximum sustainable rate.

    ``wall_s`` runs from the first send to the last answer; ``latencies_s`` are per request (queueing
    included, so they are not a latency figure at this load).
    """
    reqs = [
        Request(query=queries[i % len(queries)], top_k=5, generation={"max_new_tokens": max_new_tokens})
        for i in range(n)
    ]
    t0 = time.perf_counter()
    futs = [client.submit(r) for r in reqs]
    done_at = _completion_times(futs)
    client.flush()
    res = LoopResult(0.0)
    for f in futs:
        resp = f.result(timeout=max(1.0, timeout_s - (time.perf_counter() - t0)))
        res.tokens += resp.usage.completion_tokens
        res.responses.append(resp)
    res.wall_s = max(done_at) - t0
    res.latencies_s = [d - t0 for d in done_at]
    return res


def open_loop(
    client: RagClient, queries: list[str], rate_per_s: float, n: int, max_new_tokens: int, timeout_s: float = 300.0
) -> LoopResult:
    """``n`` requests sent at a fixed rate (requests/s, evenly spaced), whatever the answers do.

    Unlike a closed loop the offered load does not fall when the pipeline slows down, so latencies include
    the queueing a real arrival process meets. ``latencies_s`` are send → answer per request, in send order;
    ``responses`` are in the same order.
    """
    gap = 1.0 / rate_per_s
    futs: list[concurrent.futures.Future[Response]] = []
    sent: list[float] = []
    done_at: list[float] = []
    t0 = time.perf_counter()
    for i in range(n):
        wait = t0 + i * gap - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        req = Request(query=queries[i % len(queries)], top_k=5, generation={"max_new_tokens": max_new_tokens})
        sent.append(time.perf_counter())
        fut = client.submit(req)
        done_at.append(float("nan"))
        fut.add_done_callback(_stamp(done_at, i))
        futs.append(fut)
    res = LoopResult(0.0)
    for f in futs:
        res.responses.append(f.result(timeout=max(1.0, timeout_s - (time.perf_counter() - t0))))
    res.latencies_s = [d - s for d, s in zip(done_at, sent, strict=True)]
    res.wall_s = max(done_at) - t0
    res.tokens = sum(r.usage.completion_tokens for r in res.responses)
    return res


@dataclass
class StageFeed:
    """Feeds one stage's input topic with a backlog and times its outputs on another topic.

    The output consumer is assigned every partition of ``out_topic`` at its end before the feed starts, so
    only this feed's outputs are counted.

    Args:
        bootstrap: Kafka bootstrap servers.
        in_topic: the stage's input topic.
        out_topic: the topic the stage writes its outputs to.
    """

    bootstrap: str
    in_topic: str
    out_topic: str

    def run(self, messages: list[tuple[bytes, bytes, dict[str, str]]], timeout_s: float = 300.0) -> tuple[float, int]:
        """Produce ``messages`` (key, value, headers) at once and wait for as many outputs.

        Returns:
            ``(seconds from the first send to the last output, outputs counted)``.
        """
        kafka = KafkaSettings(bootstrap_servers=self.bootstrap)
        c = reader(kafka, "bench-feed", **{"fetch.wait.max.ms": 10})
        p = KafkaProducer(kafka, overrides={"linger.ms": 5})
        try:
            assign_at(c, self.out_topic, "high")
            t0 = time.perf_counter()
            for key, value, headers in messages:
                p.produce(self.in_topic, value, key, headers)
            p.flush(30)
            got = 0
            last = t0
            deadline = t0 + timeout_s
            while got < len(messages) and time.perf_counter() < deadline:
                for m in consume_available(c, 500, 0.05):
                    if m.error() is None:
                        got += 1
                        last = time.perf_counter()
            return last - t0, got
        finally:
            c.close()


def request_messages(queries: list[str], n: int, max_new_tokens: int) -> list[tuple[bytes, bytes, dict[str, str]]]:
    """``n`` fresh Requests as (key, value, headers), as :class:`RagClient` would produce them."""
    out = []
    for i in range(n):
        req = Request(query=queries[i % len(queries)], top_k=5, generation={"max_new_tokens": max_new_tokens})
        rid = str(req.request_id)
        out.append((rid.encode(), encode(req), {"request_id": rid}))
    return out


def prompt_messages(prompts: list[Prompt], n: int) -> list[tuple[bytes, bytes, dict[str, str]]]:
    """``n`` Prompts as (key, value, headers), cycled from ``prompts`` with fresh request ids (the generator's
    answer store would otherwise answer a repeated id without calling the LLM)."""
    out = []
    for i in range(n):
        src = prompts[i % len(prompts)]
        rid = uuid.uuid4()
        req = src.request.model_copy(update={"request_id": rid, "created_at": datetime.now(UTC)})
        p = src.model_copy(update={"request_id": rid, "request": req, "created_at": datetime.now(UTC)})
        out.append((str(rid).encode(), encode(p), {"request_id": str(rid)}))
    return out
