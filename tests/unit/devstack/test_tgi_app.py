"""The TGI-compatible app in-process (ASGI, no network) with the real tiny transformers engine."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from devstack.stack import TINY_LM_DIR
from devstack.tgi.generation import cut_at_stop, stop_hit
from devstack.tgi.server import ServerLimits, create_app
from devstack.tgi.transformers_engine import TransformersEngine

LIMITS = ServerLimits(max_input_tokens=64, max_total_tokens=96, max_concurrent_requests=2)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    engine = TransformersEngine(model="", tiny_model_dir=Path(TINY_LM_DIR), workers=2)
    await engine.start()
    app = create_app(engine, LIMITS)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tgi") as c:
        yield c
    await engine.close()


def test_stop_hit_finds_sequences_spanning_tokens() -> None:
    assert stop_hit("abc de", " de", ("c d",))
    assert not stop_hit("abc de", " de", ("xyz",))
    assert not stop_hit("abc", "", ("abc",))


def test_cut_at_stop_drops_the_first_stop_sequence_and_what_follows() -> None:
    assert cut_at_stop("one two three", ("two", "one t")) == ""
    assert cut_at_stop("one two three", ("three", " two")) == "one"
    assert cut_at_stop("one two", ("xyz",)) == "one two"
    assert cut_at_stop("one two", ("",)) == "one two"


async def test_info_reports_limits_and_tiny_model(client: httpx.AsyncClient) -> None:
    info = (await client.get("/info")).json()
    assert info["max_input_tokens"] == 64
    assert info["max_total_tokens"] == 96
    assert info["max_concurrent_requests"] == 2
    assert "meaningless" in info["model_id"]
    assert info["router"] == "text-generation-router"


async def test_generate_is_deterministic_when_greedy(client: httpx.AsyncClient) -> None:
    body = {"inputs": "What is a list?", "parameters": {"max_new_tokens": 8, "details": True}}
    a = (await client.post("/generate", json=body)).json()
    b = (await client.post("/generate", json=body)).json()
    assert a["generated_text"] == b["generated_text"] != ""
    assert a["details"]["generated_tokens"] == 8
    assert a["details"]["finish_reason"] == "length"
    assert "".join(t["text"] for t in a["details"]["tokens"]) == a["generated_text"]


async def test_sampling_with_seed_is_reproducible(client: httpx.AsyncClient) -> None:
    def body(seed: int) -> dict[str, object]:
        return {"inputs": "x", "parameters": {"max_new_tokens": 12, "temperature": 0.9, "seed": seed, "details": True}}

    a = (await client.post("/generate", json=body(1))).json()
    b = (await client.post("/generate", json=body(1))).json()
    c = (await client.post("/generate", json=body(2))).json()
    assert a["generated_text"] == b["generated_text"]
    assert a["details"]["seed"] == 1
    assert a["generated_text"] != c["generated_text"]


async def test_stop_sequence_ends_generation(client: httpx.AsyncClient) -> None:
    full = (await client.post("/generate", json={"inputs": "a", "parameters": {"max_new_tokens": 10}})).json()
    stop = full["generated_text"][3:6]
    body = {"inputs": "a", "parameters": {"max_new_tokens": 10, "stop": [stop], "details": True}}
    res = (await client.post("/generate", json=body)).json()
    assert res["details"]["finish_reason"] == "stop_sequence"
    assert stop in res["generated_text"]
    assert len(res["generated_text"]) < len(full["generated_text"])


async def test_too_long_input_is_422_validation(client: httpx.AsyncClient) -> None:
    r = await client.post("/generate", json={"inputs": "word " * 200, "parameters": {"max_new_tokens": 4}})
    assert r.status_code == 422
    assert r.json()["error_type"] == "validation"
    r = await client.post("/generate", json={"inputs": "word " * 40, "parameters": {"max_new_tokens": 90}})
    assert r.status_code == 422
    assert "max_new_tokens" in r.json()["error"]


async def test_truncate_keeps_the_last_tokens(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/generate", json={"inputs": "word " * 200, "parameters": {"max_new_tokens": 2, "truncate": 10}}
    )
    assert r.status_code == 200


async def test_more_than_max_concurrent_requests_get_429(client: httpx.AsyncClient) -> None:
    body = {"inputs": "a", "parameters": {"max_new_tokens": 30}}
    responses = await asyncio.gather(*(client.post("/generate", json=body) for _ in range(6)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 2
    assert 429 in codes
    assert next(r for r in responses if r.status_code == 429).json()["error_type"] == "overloaded"


async def test_generate_stream_events(client: httpx.AsyncClient) -> None:
    body = {"inputs": "a", "parameters": {"max_new_tokens": 5, "details": True}}
    r = await client.post("/generate_stream", json=body)
    events = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
    assert len(events) == 5
    assert all(e["generated_text"] is None for e in events[:-1])
    assert events[-1]["generated_text"] == "".join(e["token"]["text"] for e in events)
    assert events[-1]["details"]["generated_tokens"] == 5


async def test_tokenize_offsets(client: httpx.AsyncClient) -> None:
    text = "def f(x): return x"
    toks = (await client.post("/tokenize", json={"inputs": text})).json()
    assert "".join(t["text"] for t in toks) == text
    assert all(text[t["start"] : t["stop"]] == t["text"] for t in toks)


async def test_chat_completion_usage(client: httpx.AsyncClient) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}
    res = (await client.post("/v1/chat/completions", json=body)).json()
    assert res["choices"][0]["finish_reason"] == "length"
    assert res["usage"]["completion_tokens"] == 6
    assert res["usage"]["total_tokens"] == res["usage"]["prompt_tokens"] + 6
