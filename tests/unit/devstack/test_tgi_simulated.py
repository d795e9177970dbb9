"""The simulated engine in-process: tokenizer, fault schedule, batch slots, and the app over ASGI (no network)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from devstack.tgi.engine import EngineError, FinishEvent, GenerationParams, TokenEvent
from devstack.tgi.engines import create_engine
from devstack.tgi.server import ServerLimits, create_app
from devstack.tgi.simulated_engine import (
    FaultSchedule,
    SimulatedConfig,
    SimulatedEngine,
    parse_fault_rules,
    simple_tokenize,
)

LIMITS = ServerLimits(max_input_tokens=32, max_total_tokens=64, max_concurrent_requests=8)


@pytest.fixture
async def engine_client() -> AsyncIterator[tuple[SimulatedEngine, httpx.AsyncClient]]:
    engine = SimulatedEngine(SimulatedConfig(ttft_ms=0, per_token_ms=0, capacity=2))
    app = create_app(engine, LIMITS)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tgi") as c:
        yield engine, c


def test_tokenizer_covers_text_and_is_deterministic() -> None:
    text = "Hello, world!  It's 42 degrees.\n"
    spans = simple_tokenize(text)
    assert "".join(s.text for s in spans) == text
    assert [s.text for s in spans][:4] == ["Hello", ",", " world", "!"]
    assert all(text[s.start : s.stop] == s.text for s in spans)
    assert [s.id for s in spans] == [s.id for s in simple_tokenize(text)]
    assert SimulatedEngine().count_tokens(text) == len(spans)


def test_parse_rules_from_json_text_file_and_mapping(tmp_path: Path) -> None:
    rules = [{"kind": "overloaded", "next": 2}, {"kind": "loading", "window_s": 5, "estimated_time": 3.0}]
    path = tmp_path / "faults.json"
    path.write_text(json.dumps(rules))
    for src in (json.dumps(rules), str(path), {"rules": rules}, rules):
        parsed = parse_fault_rules(src)
        assert [r.kind for r in parsed] == ["overloaded", "loading"]
    assert parse_fault_rules("") == []
    with pytest.raises(ValueError):
        parse_fault_rules([{"kind": "nope"}])
    with pytest.raises(ValueError):
        parse_fault_rules([{"kind": "hang", "hang_secs": 3}])  # typo: extra fields are refused
    with pytest.raises(ValueError):
        parse_fault_rules([{"kind": "overloaded", "requests": [3, 1]}])


def test_schedule_next_requests_window_and_priority() -> None:
    now = [0.0]
    rules = parse_fault_rules(
        [
            {"kind": "overloaded", "next": 2},
            {"kind": "validation", "requests": [4, 5]},
            {"kind": "loading", "window_s": 10},
        ]
    )
    sched = FaultSchedule(rules, clock=lambda: now[0])
    kinds = [getattr(sched.decide(), "kind", None) for _ in range(5)]
    assert kinds == ["overloaded", "overloaded", "loading", "validation", "validation"]
    now[0] = 11.0
    assert sched.decide() is None


def test_schedule_probability_is_reproducible() -> None:
    rules = parse_fault_rules([{"kind": "stream_error", "probability": 0.3, "seed": 7}])
    s1, s2 = FaultSchedule(rules), FaultSchedule(rules)
    a = [s1.decide() is not None for _ in range(200)]
    b = [s2.decide() is not None for _ in range(200)]
    assert a == b
    assert 30 < sum(a) < 90


async def test_capacity_queues_requests_in_order() -> None:
    engine = SimulatedEngine(SimulatedConfig(ttft_ms=20, per_token_ms=10, capacity=2))
    params = GenerationParams(max_new_tokens=3)

    async def run(prompt: str) -> list[str]:
        return [ev.text async for ev in engine.generate_stream(prompt, params) if isinstance(ev, TokenEvent)]

    outs = await asyncio.gather(*(run(f"p{i}") for i in range(5)))
    assert all(len(o) == 3 for o in outs)
    assert engine.stats.max_concurrent == 2
    assert engine.stats.max_queued == 3
    assert engine.stats.completed == 5 and engine.stats.tokens_generated == 15
    assert engine.stats.generating == 0 and engine.stats.queued == 0


async def test_cancelled_waiter_gives_its_place_back() -> None:
    engine = SimulatedEngine(SimulatedConfig(ttft_ms=50, per_token_ms=0, capacity=1))
    params = GenerationParams(max_new_tokens=1)

    async def drain(prompt: str) -> None:
        async for _ in engine.generate_stream(prompt, params):
            pass

    first = asyncio.create_task(drain("a"))
    waiting = asyncio.create_task(drain("b"))
    await asyncio.sleep(0.01)
    assert engine.stats.queued == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await first
    assert engine.stats.queued == 0 and engine.stats.generating == 0
    await drain("c")  # the slot is free again
    assert engine.stats.completed == 2 and engine.stats.cancelled == 1


async def test_stream_error_after_tokens() -> None:
    engine = SimulatedEngine(rules=parse_fault_rules([{"kind": "stream_error", "after_tokens": 2, "next": 1}]))
    await engine.on_request("r1")
    got: list[TokenEvent | FinishEvent] = []
    with pytest.raises(EngineError):
        async for ev in engine.generate_stream("x", GenerationParams(max_new_tokens=5, request_id="r1")):
            got.append(ev)
    assert len(got) == 2
    assert engine.stats.failed == 1 and engine.stats.faults == {"stream_error": 1}


def test_registered_as_engine() -> None:
    import argparse

    from devstack.tgi.__main__ import build_parser

    args: argparse.Namespace = build_parser().parse_args(
        ["--engine", "simulated", "--ttft-ms", "5", "--capacity", "3", "--faults", '[{"kind": "overloaded"}]']
    )
    engine = create_engine("simulated", args)
    assert isinstance(engine, SimulatedEngine)
    assert engine.config.ttft_ms == 5 and engine.config.capacity == 3
    assert [r.kind for r in engine.schedule.rules] == ["overloaded"]


async def test_app_counts_tokens_consistently(engine_client: tuple[SimulatedEngine, httpx.AsyncClient]) -> None:
    _, c = engine_client
    prompt = "What is a generator, exactly?"
    n_prompt = len((await c.post("/tokenize", json={"inputs": prompt})).json())
    body = {"inputs": prompt, "parameters": {"max_new_tokens": 7, "details": True}}
    out = (await c.post("/generate", json=body)).json()
    assert out["details"]["generated_tokens"] == 7
    assert len((await c.post("/tokenize", json={"inputs": out["generated_text"]})).json()) == 7
    r = await c.post("/generate", json={"inputs": " ".join(["w"] * 33), "parameters": {"max_new_tokens": 1}})
    assert r.status_code == 422 and r.json()["error_type"] == "validation"
    chat = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 4}
    usage = (await c.post("/v1/chat/completions", json=chat)).json()["usage"]
    assert usage["completion_tokens"] == 4 and usage["prompt_tokens"] > n_prompt


async def test_admin_routes(engine_client: tuple[SimulatedEngine, httpx.AsyncClient]) -> None:
    engine, c = engine_client
    r = await c.post("/admin/faults", json=[{"kind": "loading", "next": 1, "estimated_time": 4.5}])
    assert r.status_code == 200 and r.json()["rules"][0]["kind"] == "loading"
    r = await c.post("/generate", json={"inputs": "x", "parameters": {"max_new_tokens": 1}})
    assert r.status_code == 503
    assert r.json() == {"error": "Model is loading", "error_type": "loading", "estimated_time": 4.5}
    assert (await c.post("/generate", json={"inputs": "x", "parameters": {"max_new_tokens": 1}})).status_code == 200
    assert (await c.post("/admin/faults", json=[{"kind": "bogus"}])).status_code == 422
    assert (await c.delete("/admin/faults")).json() == {"rules": []}
    cfg = (await c.post("/admin/config", json={"ttft_ms": 5, "capacity": 3, "max_concurrent_requests": 4})).json()
    assert cfg["ttft_ms"] == 5 and cfg["capacity"] == 3 and cfg["max_concurrent_requests"] == 4
    assert (await c.get("/info")).json()["max_concurrent_requests"] == 4
    assert (await c.post("/admin/config", json={"max_input_tokens": 64})).status_code == 422  # >= total
    assert (await c.post("/admin/config", json={"capacity": 0})).status_code == 422
    stats = (await c.get("/admin/stats")).json()
    assert stats["requests_seen"] == 2 and stats["faults"] == {"loading": 1} and stats["tokens_generated"] == 1
    stats = (await c.delete("/admin/stats")).json()
    assert stats["requests_seen"] == 0 and stats["faults"] == {}
