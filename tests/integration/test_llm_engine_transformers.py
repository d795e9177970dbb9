"""EngineLLM with the transformers engine (the tiny offline model) against the HTTP server with the same options.

The in-process adapter and ``python -m devstack.tgi`` (called through :class:`LLMServerClient`, Messages API)
share the engine, the chat template, the limits and the validation, so greedy decoding must give the same text
and the same token counts. The only intended difference: the adapter's text ends before a stop sequence, the
server's (TGI's) keeps it.
"""

from __future__ import annotations

import shlex
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry

from devstack.stack import TINY_LM_DIR
from devstack.tgi.launch import tgi_server
from workers.adapters.llm_engine import EngineLLM
from workers.adapters.llm_server import LLMServerClient
from workers.contracts.messages import ChatMessage, GenerationParams
from workers.settings import LLMSettings

#: Options of both: the engine, the tiny model, limits (tokens), and one decoding thread each.
OPTIONS = ["--tiny-model-dir", str(TINY_LM_DIR), "--max-input-tokens", "200", "--max-total-tokens", "256",
           "--generation-threads", "1"]  # fmt: skip
MESSAGES = [
    ChatMessage(role="system", content="Answer from the documentation."),
    ChatMessage(role="user", content="What does the yield statement do in a generator function?"),
]


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    with tgi_server(["--engine", "transformers", *OPTIONS], start_timeout_s=180) as (url, _proc):
        yield url


@pytest.fixture
async def http(server_url: str) -> AsyncIterator[LLMServerClient]:
    client = LLMServerClient(LLMSettings(url=server_url, api="chat", adaptive=False))
    yield client
    await client.close()


@pytest.fixture
async def engine_llm() -> AsyncIterator[tuple[EngineLLM, CollectorRegistry]]:
    registry = CollectorRegistry()
    llm = EngineLLM.from_settings(
        LLMSettings(engine="transformers", engine_args=shlex.join(OPTIONS), adaptive=False), registry
    )
    yield llm, registry
    await llm.close()


async def test_same_prompt_and_seed_give_the_same_text(
    engine_llm: tuple[EngineLLM, CollectorRegistry], http: LLMServerClient, server_url: str
) -> None:
    llm, registry = engine_llm
    info, server_info = await llm.info(), await http.info()
    assert info.model_id == server_info.model_id and "meaningless" in info.model_id
    assert (info.max_input_tokens, info.max_total_tokens) == (server_info.max_input_tokens, 256) == (200, 256)

    params = GenerationParams(max_new_tokens=12, seed=7)
    local = await llm.generate(MESSAGES, params)
    remote = await http.generate(MESSAGES, params)
    assert local.text and local.text == remote.text
    assert local.prompt_tokens == remote.prompt_tokens > 0
    assert local.completion_tokens == remote.completion_tokens <= 12
    assert local.model_id == remote.model_id
    assert 0 < local.ttft_ms <= local.total_ms
    assert llm.count([local.text, "def f(): pass"]) == http.count([local.text, "def f(): pass"])

    # A stop sequence inside the answer: the server (as TGI) streams it, neither adapter returns it (issue 14.1).
    stop = local.text[len(local.text) // 2 :][:3]
    with_stop = GenerationParams(max_new_tokens=12, seed=7, stop=[stop])
    local_stop, remote_stop = await llm.generate(MESSAGES, with_stop), await http.generate(MESSAGES, with_stop)
    assert stop not in local_stop.text
    assert local.text.startswith(local_stop.text + stop)
    assert remote_stop.text == local_stop.text
    assert local_stop.finish_reason == remote_stop.finish_reason == "stop"

    # Both sides report the engine's busy time.
    assert (registry.get_sample_value("engine_busy_seconds_total") or 0) > 0
    assert registry.get_sample_value("engine_generations_total") == 2
    metrics = httpx.get(server_url + "/metrics", timeout=10).text
    busy = [ln for ln in metrics.splitlines() if ln.startswith("engine_busy_seconds_total ")]
    assert busy and float(busy[0].split()[1]) > 0
