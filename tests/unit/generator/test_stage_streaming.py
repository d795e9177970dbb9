"""The generator stage with the simulated engine in this process: tokens as they are generated, seeds, cancels.

The LLM is real (``EngineLLM`` hosting the simulated engine, no network); the token publisher records what it is
given (the Kafka side is tested in tests/integration/test_gateway.py).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from devstack.tgi.simulated_engine import SimulatedEngine
from workers.adapters.llm_engine import EngineLLM
from workers.contracts.messages import ChatMessage, GenerationParams, Passage, Prompt, Request, Response, TokenEvent
from workers.generator.cancels import Cancellations
from workers.generator.metrics import GeneratorMetrics
from workers.generator.stage import GeneratorStage, seed_for
from workers.generator.tokens import BatchingTokenSink
from workers.settings import LLMSettings
from workers.stream.results import Failure


class Recorder:
    """Records the events a token stream publishes, with the time each was sent."""

    def __init__(self) -> None:
        self.events: list[tuple[float, TokenEvent]] = []

    def send(self, event: TokenEvent, request: Request) -> None:
        self.events.append((time.perf_counter(), event))

    async def send_and_wait(self, event: TokenEvent, request: Request) -> None:
        self.send(event, request)


@pytest.fixture
async def llm() -> AsyncIterator[EngineLLM]:
    settings = LLMSettings(engine="simulated", engine_args="--ttft-ms 5 --per-token-ms 4", adaptive=False)
    adapter = EngineLLM.from_settings(settings)
    yield adapter
    await adapter.close()


def prompt(max_new_tokens: int = 30, **request: object) -> Prompt:
    req = Request(query="What is a tuple?", **request)  # type: ignore[arg-type]  # test values
    passage = Passage(chunk_id="d#0", document_id="d", score=0.9, text="A tuple is a sequence.", rank=0)
    return Prompt(
        request_id=req.request_id,
        request=req,
        passages=[passage],
        messages=[ChatMessage(role="user", content="[1] A tuple is a sequence.\n\nWhat is a tuple?")],
        template_id="t",
        template_hash="h",
        prompt_tokens=20,
        max_new_tokens=max_new_tokens,
    )


async def test_tokens_stream_in_batches_and_join_into_the_answer(llm: EngineLLM) -> None:
    rec = Recorder()
    stage = GeneratorStage(llm, tokens=BatchingTokenSink(rec, max_tokens=4, max_delay_ms=1000))
    p = prompt(30, stream_tokens=True)
    resp = await stage.generate(p)
    assert isinstance(resp, Response) and resp.status == "ok" and resp.answer
    events = [e for _, e in rec.events]
    assert "".join(e.delta for e in events) == resp.answer
    assert [e.seq for e in events] == list(range(len(events)))
    assert events[0].tokens == 1  # the first token goes out at once (time to first token)
    assert len(events) <= 1 + 30 // 4 + 1  # batched: not one event per token
    assert all(e.offset == sum(len(x.delta) for x in events[:i]) for i, e in enumerate(events))
    last = events[-1]
    assert last.final and last.finish_reason == "length" and last.usage is not None
    assert last.usage.completion_tokens == 30 and [x.text for x in last.passages] == ["A tuple is a sequence."]
    assert len({e.attempt for e in events}) == 1 and events[0].attempt > 0
    # a request that does not ask for tokens gets none
    await stage.generate(prompt(5))
    assert len(rec.events) == len(events)


async def test_pieces_wait_at_most_the_batching_delay(llm: EngineLLM) -> None:
    rec = Recorder()
    stage = GeneratorStage(llm, tokens=BatchingTokenSink(rec, max_tokens=1000, max_delay_ms=20))
    t0 = time.perf_counter()
    resp = await stage.generate(prompt(40, stream_tokens=True))  # ~160 ms of tokens at 4 ms each
    assert isinstance(resp, Response)
    times = [t - t0 for t, _ in rec.events]
    assert len(rec.events) >= 4  # flushed by the timer, not only at the end
    assert all(b - a < 0.2 for a, b in zip(times, times[1:], strict=False))


async def test_the_same_request_regenerates_the_same_text(llm: EngineLLM) -> None:
    """A redelivered prompt (same request id, no seed given) gets the same seed, so the same text."""
    stage = GeneratorStage(llm)
    p = prompt(12)
    first, again = await stage.generate(p), await stage.generate(p)
    assert isinstance(first, Response) and isinstance(again, Response) and first.answer == again.answer
    assert seed_for(p.request) != seed_for(prompt().request)  # derived from the request id
    assert seed_for(Request(query="q", generation=GenerationParams(seed=7))) == 7  # the request's own wins


async def test_a_cancel_stops_the_generation_and_answers_cancelled(llm: EngineLLM) -> None:
    cancels = Cancellations()
    rec = Recorder()
    metrics = GeneratorMetrics()
    stage = GeneratorStage(llm, metrics, tokens=BatchingTokenSink(rec, max_tokens=1), cancels=cancels)
    p = prompt(200, stream_tokens=True)  # 800 ms of tokens
    task = asyncio.create_task(stage.generate(p))
    while len(rec.events) < 3:
        await asyncio.sleep(0.002)
    t0 = time.perf_counter()
    cancels.cancel(p.request_id)
    out = await task
    assert time.perf_counter() - t0 < 0.5
    assert isinstance(out, Failure) and out.status == "cancelled" and not out.dead_letter
    assert out.response is not None and out.response.status == "cancelled"
    assert out.response.error is not None and out.response.error.error_class == "cancelled"
    engine = llm.engine
    assert isinstance(engine, SimulatedEngine)
    await asyncio.sleep(0.05)
    assert engine.stats.cancelled == 1 and engine.stats.tokens_generated < 50  # the engine stopped too
    assert metrics.cancelled._value.get() == 1
    assert metrics.tokens_saved._value.get() > 150 and metrics.seconds_saved._value.get() > 0.3
    # a request cancelled before its prompt arrives is answered without an LLM call
    q = prompt(5)
    cancels.cancel(q.request_id)
    seen = engine.stats.requests_seen
    out = await stage.generate(q)
    assert isinstance(out, Failure) and out.status == "cancelled" and engine.stats.requests_seen == seen


async def test_cancellations_are_remembered_for_a_while() -> None:
    now = [0.0]
    c = Cancellations(ttl_s=10, max_entries=2, clock=lambda: now[0])
    a, b, d = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    c.cancel(a)
    assert c.is_cancelled(a) and not c.is_cancelled(b)
    await asyncio.wait_for(c.wait_cancelled(a), 1)  # at once
    waiter = asyncio.create_task(c.wait_cancelled(b))
    await asyncio.sleep(0)
    c.cancel(b)
    await asyncio.wait_for(waiter, 1)
    c.cancel(d)  # a third: the oldest is forgotten
    assert not c.is_cancelled(a) and c.is_cancelled(d)
    now[0] = 11.0
    assert not c.is_cancelled(b)
