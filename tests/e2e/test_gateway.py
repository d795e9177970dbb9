"""End to end through the gateway (issue 13): the OpenAI API over HTTP, tokens streamed over Kafka, a chat page.

One pipeline for the module (devstack/gateway.py): a retriever, a generator and two gateway replicas (reply
partitions 0 and 1) on topics of their own, answering from four small documents with the simulated LLM server
(deterministic filler text: a seed gives the same words). Each test is one of the issue's inputs:

1. the official ``openai`` client, unchanged: a completion and a stream with the same seed give the same text;
2. ``curl -N``: ``data:`` lines arrive before the last one;
3. two replicas, 100 streams over both: each gets exactly its own tokens, in order, ending ``[DONE]``;
4. ``kill -9`` of the generator after the 10th token of a 60-token stream: the client gets the whole text once;
5. a client gone after 3 tokens: the generation stops within 2 s, the answer is recorded ``cancelled``;
6. no key → 401, 11 requests/s against 10/s → 429 with Retry-After, a 5 MB body → 413, ``messages: []`` → 400,
   none of them reaching Kafka;

plus a follow-up question searched with its conversation, and the chat page in headless Chromium (screenshot).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from devstack.gateway import GatewayPipeline
from tests.cdp import CHROMIUM, Browser
from tests.conftest import SimulatedLLM
from tests.e2e.conftest import delete_topics_with_prefix
from workers.contracts.messages import Response
from workers.contracts.serde import decode
from workers.kafka.reader import read_topic, reader, watermarks
from workers.settings import KafkaSettings

QUESTION = "What is a tuple in Python?"
README = Path(__file__).resolve().parents[2] / "README.md"


def readme_section_blocks(title: str) -> list[tuple[str, str]]:
    """``(language, code)`` of the fenced blocks of one README section."""
    text = README.read_text(encoding="utf-8")
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```(\w+)\n(.*?)^```", section, re.M | re.S)


@pytest.fixture(scope="module")
def gw(stack: Any, sim_llm_server: SimulatedLLM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayPipeline]:
    """The module's pipeline behind two gateway replicas (rate limit high enough for the load tests)."""
    sim_llm_server.reset(ttft_ms=20, per_token_ms=5, capacity=256, max_concurrent_requests=512)
    pipe = GatewayPipeline(
        env={**stack.env(), "RAG_LLM__URL": sim_llm_server.url},
        log_dir=tmp_path_factory.mktemp("gateway"),
        gateways=2,
        extra_env={"RAG_GATEWAY__RATE_LIMIT_PER_S": "1000"},
    )
    codes: dict[str, int | None] = {}
    try:
        pipe.start()
        yield pipe
    finally:
        codes = pipe.stop()
        delete_topics_with_prefix(stack.bootstrap_servers, pipe.prefix)
    # a replica finishes its requests on SIGTERM and exits 0 (not by the re-raised signal, -15)
    gateways = {n: c for n, c in codes.items() if n.startswith("gateway")}
    assert len(gateways) >= 2 and set(gateways.values()) == {0}, codes


def body(content: str = QUESTION, **fields: Any) -> dict[str, Any]:
    return {"model": "ragstream", "messages": [{"role": "user", "content": content}], **fields}


def responses(stack: Any, gw: GatewayPipeline) -> dict[uuid.UUID, tuple[Response, int]]:
    """Every Response on the pipeline's responses topic with its partition (the last one per request id)."""
    records = read_topic(KafkaSettings(bootstrap_servers=stack.bootstrap_servers), gw.prefix + "rag.responses")
    out = {}
    for r in records:
        resp = decode(r.value, Response)
        out[resp.request_id] = (resp, r.partition)
    return out


def requests_end(stack: Any, gw: GatewayPipeline) -> int:
    """Records in the requests topic (sum of the high watermarks)."""
    consumer = reader(KafkaSettings(bootstrap_servers=stack.bootstrap_servers))
    try:
        return sum(hi for _, hi in watermarks(consumer, gw.prefix + "rag.requests").values())
    finally:
        consumer.close()


def stream_text(lines: list[str]) -> tuple[str, bool]:
    """The content of an SSE stream's lines and whether it ended with ``[DONE]``."""
    text = ""
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            data = json.loads(line[6:])
            assert "error" not in data, data
            for choice in data["choices"]:
                text += choice["delta"].get("content") or ""
    return text, bool(lines) and lines[-1] == "data: [DONE]"


def test_the_openai_client_gets_a_completion_and_the_same_text_streamed(gw: GatewayPipeline) -> None:
    client = OpenAI(base_url=gw.urls[0] + "/v1", api_key=gw.key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="ragstream", messages=[{"role": "user", "content": QUESTION}], max_tokens=24, seed=7
    )
    assert uuid.UUID(raw.headers["x-request-id"])
    comp = raw.parse()
    text = comp.choices[0].message.content
    assert text and comp.choices[0].finish_reason == "length" and comp.usage and comp.usage.completion_tokens == 24
    sources = (comp.model_extra or {})["sources"]
    assert sources[0]["document_id"] == "tuples.md" and sources[0]["score"] > 0
    stream = client.chat.completions.create(
        model="ragstream", messages=[{"role": "user", "content": QUESTION}], max_tokens=24, seed=7, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    parts: list[str] = []
    usage = None
    for chunk in stream:
        parts.extend(c.delta.content for c in chunk.choices if c.delta.content)
        usage = chunk.usage or usage
    assert "".join(parts) == text and len(parts) > 1
    assert usage is not None and usage.completion_tokens == 24
    assert [m.id for m in client.models.list()] == ["ragstream"]


def test_curl_shows_data_lines_arriving_before_the_last(gw: GatewayPipeline, sim_llm_server: SimulatedLLM) -> None:
    sim_llm_server.reset(ttft_ms=20, per_token_ms=30, capacity=256, max_concurrent_requests=512)
    cmd = ["curl", "-N", "-s", "-X", "POST", gw.urls[1] + "/v1/chat/completions",
           "-H", f"Authorization: Bearer {gw.key}", "-H", "Content-Type: application/json",
           "-d", json.dumps(body(stream=True, max_tokens=30))]  # fmt: skip
    t0 = time.perf_counter()
    arrivals: list[tuple[float, str]] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip():
                arrivals.append((time.perf_counter() - t0, line.strip()))
        assert proc.wait(10) == 0
    lines = [line for _, line in arrivals]
    text, done = stream_text(lines)
    assert done and len(text.split()) == 30
    content = [t for t, line in arrivals if '"content":"' in line and '"content":""' not in line]
    print(f"\ncurl: {len(content)} content lines from {content[0]:.3f} s to {content[-1]:.3f} s, [DONE] at "
          f"{arrivals[-1][0]:.3f} s")  # fmt: skip
    assert len(content) >= 5
    assert content[0] < arrivals[-1][0] - 0.5  # the first token came long before the end (30 tokens x 30 ms)


async def test_two_replicas_100_streams_each_get_their_own_tokens(
    gw: GatewayPipeline, sim_llm_server: SimulatedLLM, stack: Any
) -> None:
    sim_llm_server.reset(ttft_ms=20, per_token_ms=5, capacity=256, max_concurrent_requests=512)

    async def one(client: httpx.AsyncClient, url: str, seed: int) -> tuple[uuid.UUID, str, bool]:
        req = body(stream=True, max_tokens=15 + seed % 10, seed=seed)
        async with client.stream("POST", url + "/v1/chat/completions", json=req, headers=gw.headers()) as r:
            assert r.status_code == 200
            lines = [line async for line in r.aiter_lines() if line]
            text, done = stream_text(lines)
            return uuid.UUID(r.headers["x-request-id"]), text, done

    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        got = await asyncio.gather(*(one(client, gw.urls[i % 2], 1000 + i) for i in range(100)))
    answers = responses(stack, gw)
    texts = set()
    for i, (rid, text, done) in enumerate(got):
        resp, partition = answers[rid]
        assert done and resp.status == "ok" and text == resp.answer, (i, rid)
        assert partition == i % 2  # the answer went to the asking replica's partition only
        texts.add(text)
    assert len(texts) >= 40  # seeds and lengths vary the texts: a mixed stream would not match its own answer


def test_a_generator_killed_mid_stream_the_client_gets_the_whole_text_once(
    gw: GatewayPipeline, sim_llm_server: SimulatedLLM, stack: Any
) -> None:
    sim_llm_server.reset(ttft_ms=20, per_token_ms=40, capacity=256, max_concurrent_requests=512)
    assert gw.procs is not None
    gen = next(p for p in gw.procs.procs if p.worker == "generator" and p.proc.poll() is None)
    text = ""
    killed_at = None
    with httpx.stream(
        "POST", gw.urls[0] + "/v1/chat/completions", json=body(stream=True, max_tokens=60), headers=gw.headers(),
        timeout=120,
    ) as r:  # fmt: skip
        rid = uuid.UUID(r.headers["x-request-id"])
        lines = []
        for line in r.iter_lines():
            if not line:
                continue
            lines.append(line)
            text, _ = stream_text(lines)
            if killed_at is None and len(text.split()) >= 10:
                os.kill(gen.proc.pid, signal.SIGKILL)
                killed_at = len(text.split())
                gw.restart_generator()
    final, done = stream_text(lines)
    resp, _ = responses(stack, gw)[rid]
    print(f"\nkilled the generator after {killed_at} tokens; the client got {len(final.split())} tokens")
    assert done and killed_at is not None and killed_at < 60
    assert final == resp.answer and len(final.split()) == 60  # every token once, none missing
    metrics = httpx.get(gw.urls[0] + "/metrics", timeout=10).text
    assert "ragstream_gateway_streams_resumed_total 1.0" in metrics


def test_a_client_gone_after_3_tokens_cancels_its_generation(
    gw: GatewayPipeline, sim_llm_server: SimulatedLLM, stack: Any
) -> None:
    sim_llm_server.reset(ttft_ms=20, per_token_ms=40, capacity=256, max_concurrent_requests=512)
    before = sim_llm_server.stats()["cancelled"]
    with httpx.stream(
        "POST", gw.urls[1] + "/v1/chat/completions", json=body(stream=True, max_tokens=200), headers=gw.headers(),
        timeout=60,
    ) as r:  # fmt: skip
        rid = uuid.UUID(r.headers["x-request-id"])
        lines = []
        for line in r.iter_lines():
            if line:
                lines.append(line)
                if len(stream_text(lines)[0].split()) >= 3:
                    break
    gone = time.monotonic()  # leaving the block closed the connection
    while sim_llm_server.stats()["cancelled"] == before and time.monotonic() - gone < 5:
        time.sleep(0.02)
    stopped_s = time.monotonic() - gone
    stats = sim_llm_server.stats()
    print(f"\nthe LLM stopped {stopped_s:.2f} s after the client left (tokens generated {stats['tokens_generated']})")
    assert stats["cancelled"] == before + 1 and stopped_s < 2.0
    deadline = time.monotonic() + 20
    while (found := responses(stack, gw).get(rid)) is None and time.monotonic() < deadline:
        time.sleep(0.3)
    assert found is not None and found[0].status == "cancelled" and found[1] == 1
    metrics = httpx.get(gw.urls[1] + "/metrics", timeout=10).text
    assert "ragstream_gateway_cancels_total 1.0" in metrics


def test_refusals_never_reach_kafka(gw: GatewayPipeline, stack: Any) -> None:
    """No key → 401; 11 requests/s against 10/s → 429 with Retry-After; 5 MB → 413; messages [] → 400."""
    assert gw.procs is not None
    proc = gw.start_gateway(2, RAG_GATEWAY__RATE_LIMIT_PER_S="10")
    url = gw.urls[2]
    for _ in range(100):
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.proc.poll() is None, proc.log_tail()
        time.sleep(0.2)
    end = requests_end(stack, gw)
    with httpx.Client(base_url=url, timeout=30) as c:
        no_key = c.post("/v1/chat/completions", json=body())
        assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"
        assert uuid.UUID(no_key.headers["x-request-id"])
        wrong = c.post("/v1/chat/completions", json=body(), headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401

        async def eleven() -> list[httpx.Response]:  # 11 requests at once against 10/s (a bucket of 10)
            async with httpx.AsyncClient(base_url=url, timeout=30) as ac:
                empty = {"messages": []}
                posts = [ac.post("/v1/chat/completions", json=empty, headers=gw.headers()) for _ in range(11)]
                return list(await asyncio.gather(*posts))

        for _ in range(3):  # a burst the bucket refilled during (a slow machine: > 0.1 s for 11) is tried again
            t0 = time.monotonic()
            burst = asyncio.run(eleven())
            codes = [r.status_code for r in burst]
            if 429 in codes or time.monotonic() - t0 < 0.1:
                break
            time.sleep(1.2)
        assert codes.count(429) >= 1 and set(codes) == {400, 429}, codes
        limited = next(r for r in burst if r.status_code == 429)
        assert int(limited.headers["retry-after"]) >= 1 and limited.json()["error"]["type"] == "rate_limit_error"
        empty = next(r for r in burst if r.status_code == 400).json()["error"]
        assert empty["param"] == "messages" and empty["type"] == "invalid_request_error"
        time.sleep(1.2)
        big = c.post("/v1/chat/completions", content=b"{" + b" " * (5 * 1024 * 1024), headers=gw.headers())
        assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
        bad = c.post("/v1/chat/completions", content=b"{not json", headers=gw.headers())
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
        metrics = c.get("/metrics").text
    assert requests_end(stack, gw) == end  # none of them reached Kafka
    assert gw.key not in metrics and 'reason="rate_limit_exceeded"' in metrics


def test_health_and_a_follow_up_question_searched_with_its_conversation(gw: GatewayPipeline) -> None:
    health = httpx.get(gw.urls[0] + "/healthz", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "ok", "reply_partition": 0}
    assert httpx.get(gw.urls[0] + "/v1/models", timeout=10).status_code == 401
    turns = [
        {"role": "user", "content": "What does the len function return for a dictionary?"},
        {"role": "assistant", "content": "The number of keys."},
        {"role": "user", "content": "and what type is that?"},
    ]
    r = httpx.post(
        gw.urls[0] + "/v1/chat/completions", json={"messages": turns, "max_tokens": 8}, headers=gw.headers(), timeout=60
    )
    assert r.status_code == 200, r.text
    assert r.json()["sources"][0]["document_id"] == "len.md"  # "and what type is that?" alone names no topic


async def test_the_chat_page_streams_an_answer_with_sources_and_timings(
    gw: GatewayPipeline, sim_llm_server: SimulatedLLM, tmp_path: Path
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run scripts/install-chromium.sh")
    sim_llm_server.reset(ttft_ms=20, per_token_ms=8, capacity=256, max_concurrent_requests=512)  # 256 tokens: 2 s
    async with Browser(tmp_path / "chromium") as page:
        await page.goto(gw.urls[0] + "/")
        await page.type_text("#key", gw.key)
        await page.type_text("#question", "What does the with statement guarantee?")
        await page.eval("document.getElementById('ask').click()")
        seen: list[tuple[str, int]] = []
        deadline = time.monotonic() + 60
        state = ""
        while state not in ("done", "error") and time.monotonic() < deadline:
            got = await page.eval(
                "({s: document.querySelector('.status').dataset.state,"
                " n: document.querySelector('.answer').textContent.length})"
            )
            state = got["s"]
            seen.append((state, got["n"]))
            await asyncio.sleep(0.02)
        assert state == "done", seen[-3:]
        streaming = [n for s, n in seen if s == "streaming"]
        assert streaming and 0 < min(streaming) < max(n for _, n in seen)  # tokens before the final one
        sources = await page.eval("[...document.querySelectorAll('ol.sources li')].map(li => li.textContent)")
        assert sources and sources[0].startswith("with.md") and "score" in sources[0]
        expandable = await page.eval("document.querySelectorAll('ol.sources details pre').length")
        timings = await page.eval("document.querySelectorAll('table.timings tr').length")
        assert expandable >= 1 and timings >= 5
        await page.eval("document.querySelector('ol.sources details').open = true")
        shot = await page.screenshot(tmp_path / "chat-page.png")
    print(f"\nchat page screenshot: {shot}")
    assert shot.stat().st_size > 10_000


def test_the_readme_examples_run_as_pasted(gw: GatewayPipeline, sim_llm_server: SimulatedLLM) -> None:
    """The curl and Python blocks of README "Use it from any OpenAI client", against this pipeline's gateway."""
    sim_llm_server.reset(ttft_ms=20, per_token_ms=5, capacity=256, max_concurrent_requests=512)
    blocks = readme_section_blocks("Use it from any OpenAI client")
    curl = next(code for lang, code in blocks if lang == "bash" and "curl -N" in code)
    python = next(code for lang, code in blocks if lang == "python")
    env = {**os.environ, "OPENAI_BASE_URL": gw.urls[0] + "/v1", "OPENAI_API_KEY": gw.key}
    commands = "\n".join(line for line in curl.splitlines() if not line.startswith("export "))  # the values: env
    out = subprocess.run(["bash", "-c", commands], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("data: [DONE]") and out.stdout.count("data: ") > 5
    out = subprocess.run([sys.executable, "-c", python], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    first, sources, streamed = out.stdout.splitlines()[:3]
    assert "completion_tokens=32" in first and "with.md" in sources
    assert streamed == first.split(" CompletionUsage(")[0]  # the same seed streams the same text
