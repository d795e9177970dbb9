"""The simulated engine as a real server process, through huggingface_hub's AsyncInferenceClient.

One server (``python -m devstack.tgi --engine simulated``) on a free port serves the module; every test
resets its faults, settings and counters through the admin API first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.errors import (
    GenerationError,
    HfHubHTTPError,
    OverloadedError,
    TextGenerationError,
    ValidationError,
)

from devstack.tgi.launch import simulated_server

DEFAULTS: dict[str, Any] = {"ttft_ms": 100, "per_token_ms": 20, "capacity": 4, "max_concurrent_requests": 32}


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with simulated_server(max_input_tokens=64, max_total_tokens=128, start_timeout_s=30) as (url, _proc):
        yield url


@pytest.fixture
async def admin(sim_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim_url, timeout=10) as c:
        assert (await c.delete("/admin/faults")).status_code == 200
        assert (await c.post("/admin/config", json=DEFAULTS)).status_code == 200
        assert (await c.delete("/admin/stats")).status_code == 200
        yield c


@pytest.fixture
async def llm(sim_url: str, admin: httpx.AsyncClient) -> AsyncIterator[AsyncInferenceClient]:
    client = AsyncInferenceClient(base_url=sim_url, timeout=30)
    yield client
    await client.close()


async def _stats(admin: httpx.AsyncClient) -> dict[str, Any]:
    return (await admin.get("/admin/stats")).json()


async def test_ttft_and_per_token_time_are_honoured(llm: AsyncInferenceClient, admin: httpx.AsyncClient) -> None:
    await admin.post("/admin/config", json={"ttft_ms": 300, "per_token_ms": 50})
    t0 = time.monotonic()
    stamps: list[float] = []
    async for _ in await llm.text_generation("Hello", max_new_tokens=6, stream=True):
        stamps.append(time.monotonic() - t0)
    assert len(stamps) == 6
    assert 0.3 <= stamps[0] < 0.6  # the first token is only sent with the second (the server holds one back)
    total = stamps[-1]
    assert 0.3 + 5 * 0.05 <= total < 0.55 + 0.3


async def test_capacity_batches_requests(llm: AsyncInferenceClient, admin: httpx.AsyncClient) -> None:
    await admin.post("/admin/config", json={"ttft_ms": 100, "per_token_ms": 50, "capacity": 4})
    one_round = 0.1 + 4 * 0.05  # 5 tokens
    t0 = time.monotonic()
    outs = await asyncio.gather(*(llm.text_generation(f"q{i}", max_new_tokens=5) for i in range(8)))
    elapsed = time.monotonic() - t0
    assert all(len(o.split()) == 5 for o in outs)
    stats = await _stats(admin)
    assert stats["max_concurrent"] == 4
    assert stats["max_queued"] == 4
    assert stats["completed"] == 8 and stats["tokens_generated"] == 40
    assert 2 * one_round <= elapsed < 2 * one_round + 0.4


async def test_many_concurrent_streams_are_cheap(llm: AsyncInferenceClient, admin: httpx.AsyncClient) -> None:
    await admin.post("/admin/config", json={"ttft_ms": 200, "per_token_ms": 20, "capacity": 128})
    await admin.post("/admin/config", json={"max_concurrent_requests": 128})

    async def stream(i: int) -> int:
        return len([t async for t in await llm.text_generation(f"s{i}", max_new_tokens=10, stream=True)])

    t0 = time.monotonic()
    counts = await asyncio.gather(*(stream(i) for i in range(120)))
    elapsed = time.monotonic() - t0
    assert counts == [10] * 120
    assert (await _stats(admin))["max_concurrent"] >= 100
    assert elapsed < 0.2 + 9 * 0.02 + 2.5  # one round, plus slack for 120 clients in one test process


async def test_max_concurrent_requests_gives_429(llm: AsyncInferenceClient, admin: httpx.AsyncClient) -> None:
    await admin.post("/admin/config", json={"max_concurrent_requests": 2, "ttft_ms": 400})
    results = await asyncio.gather(
        *(llm.text_generation("x", max_new_tokens=2) for _ in range(3)), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], OverloadedError)
    async with httpx.AsyncClient(base_url=str(admin.base_url)) as c:
        r = await c.get("/info")
    assert r.json()["max_concurrent_requests"] == 2


async def test_overloaded_twice_then_success(llm: AsyncInferenceClient, admin: httpx.AsyncClient) -> None:
    await admin.post("/admin/faults", json=[{"kind": "overloaded", "next": 2}])
    for _ in range(2):
        with pytest.raises(OverloadedError):
            await llm.text_generation("x", max_new_tokens=2)
    assert await llm.text_generation("x", max_new_tokens=2)
    stats = await _stats(admin)
    assert stats["faults"] == {"overloaded": 2} and stats["requests_seen"] == 3 and stats["completed"] == 1


async def test_loading_gives_503_with_estimated_time(llm: AsyncInferenceClient, admin: httpx.AsyncClient) -> None:
    await admin.post("/admin/faults", json=[{"kind": "loading", "window_s": 60, "estimated_time": 12.5}])
    r = await admin.post("/generate", json={"inputs": "x", "parameters": {"max_new_tokens": 2}})
    assert r.status_code == 503
    assert r.json() == {"error": "Model is loading", "error_type": "loading", "estimated_time": 12.5}
    with pytest.raises(TextGenerationError) as info:  # huggingface_hub: UnknownError from the 503
        await llm.text_generation("x", max_new_tokens=2)
    assert isinstance(info.value.__cause__, HfHubHTTPError)
    assert info.value.__cause__.response.status_code == 503
    with pytest.raises(HfHubHTTPError) as chat_info:
        await llm.chat_completion([{"role": "user", "content": "x"}], max_tokens=2)
    assert chat_info.value.response.status_code == 503


async def test_too_long_input_and_validation_fault_give_422(
    llm: AsyncInferenceClient, admin: httpx.AsyncClient
) -> None:
    limit = (await admin.get("/info")).json()["max_input_tokens"]
    ok_prompt = " ".join(["w"] * limit)
    assert len((await admin.post("/tokenize", json={"inputs": ok_prompt})).json()) == limit
    out = await llm.text_generation(ok_prompt, max_new_tokens=1, details=True)
    assert out.details is not None
    with pytest.raises(ValidationError):
        await llm.text_generation(ok_prompt + " w", max_new_tokens=1)
    await admin.post("/admin/faults", json=[{"kind": "validation", "next": 1, "message": "simulated"}])
    with pytest.raises(ValidationError, match="simulated"):
        await llm.text_generation("short", max_new_tokens=1)


async def test_hang_outlasts_the_client_timeout(sim_url: str, admin: httpx.AsyncClient) -> None:
    await admin.post("/admin/faults", json=[{"kind": "hang", "next": 2, "hang_s": 1.5}])
    client = AsyncInferenceClient(base_url=sim_url, timeout=0.4)
    try:
        t0 = time.monotonic()
        # huggingface_hub 1.x converts only asyncio.TimeoutError into InferenceTimeoutError: httpx's
        # ReadTimeout reaches the caller as is (an adapter must catch both).
        with pytest.raises(httpx.TimeoutException):
            await client.text_generation("x", max_new_tokens=2)
        with pytest.raises(httpx.TimeoutException):
            await client.chat_completion([{"role": "user", "content": "x"}], max_tokens=2, stream=True)
        assert time.monotonic() - t0 < 1.4
    finally:
        await client.close()
    stats = await _stats(admin)
    assert stats["faults"] == {"hang": 2} and stats["hanging"] == 2
    # After hang_s the requests are served (to clients that left); wait so they do not count in later tests.
    deadline = time.monotonic() + 5
    while stats["in_flight"] or stats["server_in_flight"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
        stats = await _stats(admin)


async def test_stream_error_in_generate_stream(llm: AsyncInferenceClient, admin: httpx.AsyncClient) -> None:
    await admin.post("/admin/faults", json=[{"kind": "stream_error", "next": 1, "after_tokens": 3}])
    got: list[str] = []
    with pytest.raises(GenerationError, match="Simulated generation error"):
        async for tok in await llm.text_generation("x", max_new_tokens=10, stream=True):
            got.append(tok)
    assert len(got) == 3
    raw = await admin.post("/admin/faults", json=[{"kind": "stream_error", "next": 1, "after_tokens": 1}])
    assert raw.status_code == 200
    r = await admin.post("/generate_stream", json={"inputs": "x", "parameters": {"max_new_tokens": 5}})
    last = [line for line in r.text.splitlines() if line.startswith("data:")][-1]
    assert last == 'data:{"error": "Simulated generation error", "error_type": "generation"}'
    assert (await _stats(admin))["failed"] == 2


async def test_stream_error_in_chat_stream(llm: AsyncInferenceClient, admin: httpx.AsyncClient) -> None:
    await admin.post("/admin/faults", json=[{"kind": "stream_error", "next": 1, "after_tokens": 2}])
    pieces: list[str] = []
    with pytest.raises(GenerationError):
        async for chunk in await llm.chat_completion([{"role": "user", "content": "x"}], max_tokens=10, stream=True):
            pieces.append(chunk.choices[0].delta.content or "")
    assert len(pieces) == 2
    await admin.post("/admin/faults", json=[{"kind": "stream_error", "next": 1, "after_tokens": 2}])
    # Without streaming: HTTP 500 {"error_type": "generation"}; huggingface_hub parses TGI error bodies for
    # text_generation only, so chat_completion raises the plain HTTP error.
    with pytest.raises(HfHubHTTPError) as info:
        await llm.chat_completion([{"role": "user", "content": "x"}], max_tokens=10)
    assert info.value.response.status_code == 500


async def test_slow_rule_overrides_time_per_token(llm: AsyncInferenceClient, admin: httpx.AsyncClient) -> None:
    await admin.post("/admin/config", json={"ttft_ms": 0, "per_token_ms": 0})
    await admin.post("/admin/faults", json=[{"kind": "slow", "next": 1, "per_token_ms": 100}])
    t0 = time.monotonic()
    await llm.text_generation("x", max_new_tokens=5)
    slow = time.monotonic() - t0
    t0 = time.monotonic()
    await llm.text_generation("x", max_new_tokens=5)
    fast = time.monotonic() - t0
    assert 0.4 <= slow < 0.8 and fast < 0.2


async def test_admin_stats_counts(llm: AsyncInferenceClient, admin: httpx.AsyncClient) -> None:
    await admin.post("/admin/config", json={"ttft_ms": 10, "per_token_ms": 5})
    await admin.post("/admin/faults", json=[{"kind": "overloaded", "requests": [2, 2]}])
    await llm.text_generation("a", max_new_tokens=4)
    with pytest.raises(OverloadedError):
        await llm.text_generation("b", max_new_tokens=4)
    chunks = [c async for c in await llm.chat_completion([{"role": "user", "content": "c"}], max_tokens=3, stream=True)]
    assert chunks
    stats = await _stats(admin)
    assert stats["requests_seen"] == 3
    assert stats["completed"] == 2
    assert stats["tokens_generated"] == 7
    assert stats["faults"] == {"overloaded": 1}
    assert stats["in_flight"] == 0 and stats["queued"] == 0 and stats["server_in_flight"] == 0
    rules = (await admin.get("/admin/faults")).json()["rules"]
    assert rules[0]["requests"] == [2, 2]
