"""The LLM contract: what ragstream's one LLM client (``LLMServerClient``) promises, checked against servers we did
not write as well as ours (issue 16; issue 14 findings 1 and 2).

Parametrized by server:

* ``devstack``: our TGI-compatible server (``python -m devstack.tgi``, the simulated engine: TGI's routes, ``/info``
  limits, ``/tokenize``, stop text kept in the output, TGI's error bodies);
* ``llama.cpp``: llama-cpp-python's OpenAI-compatible server (``python -m llama_cpp.server --chat_format chatml``)
  with SmolLM2-135M-Instruct (Q4_1 GGUF): no ``/health``, no ``/info``, no limits anywhere, ``/extras/tokenize``,
  no usage in streams, stop text excluded, OpenAI's error bodies, and an over-long prompt refused inside an
  already-started stream.

Each server is started once for the module; the client sees only ``RAG_LLM__URL`` (plus the knobs a test turns).
llama-cpp-python is built once per machine by ``scripts/build-llama-cpp.sh`` (``.ci/run`` calls it); without it
the llama.cpp cases are skipped with that hint, except under CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack import llamacpp
from devstack.stack import TINY_LM_DIR
from devstack.tgi.launch import simulated_server, tgi_server
from devstack.tgi.tiny_model import build_tiny_model
from tests.llm_servers import require_llama_cpp
from workers.adapters.llm_engine import EngineLLM
from workers.adapters.llm_server import LLMServerClient
from workers.contracts.errors import LLMRetryableError, LLMValidationError
from workers.contracts.messages import ChatMessage, GenerationParams
from workers.settings import LLMSettings

MESSAGES = [
    ChatMessage(role="system", content="You are a helpful assistant. Answer in one sentence."),
    ChatMessage(role="user", content="Tell me about the city of Paris and the river that flows through it."),
]
#: Longer than either server's prompt limit (devstack 300 tokens, llama.cpp a 512-token context).
TOO_LONG = [ChatMessage(role="user", content="word " * 3000)]


@dataclass(frozen=True)
class Server:
    """A running server and what the contract expects of it where servers may differ."""

    kind: str
    url: str
    #: Generation APIs it has.
    apis: tuple[str, ...]
    #: ``(kind, health route, limits source)`` as discovery should find them.
    discovered: tuple[str, str, str]
    #: Name of its tokenize route's shape.
    tokenize: str
    #: Whether it sends usage in a stream (``stream_options.include_usage``).
    stream_usage: bool
    #: What its refusal of an over-long prompt says.
    too_long: str
    #: Starts another server of this kind (for the server-down case).
    start: Callable[[], AbstractContextManager[tuple[str, Any]]]


def _devstack() -> AbstractContextManager[tuple[str, Any]]:
    return simulated_server(max_input_tokens=300, max_total_tokens=400)


def _llama_cpp() -> AbstractContextManager[tuple[str, Any]]:
    return llamacpp.llama_cpp_server(n_ctx=512)


SERVERS = {
    "devstack": lambda url: Server(
        "devstack", url, ("chat", "text_generation"), ("tgi", "/health", "/info"), "tgi", True, "less than 300 tokens",
        _devstack,
    ),
    "llama.cpp": lambda url: Server(
        "llama.cpp", url, ("chat",), ("openai", "/v1/models", "none"), "llama-cpp-python", False,
        "maximum context length is 512 tokens", _llama_cpp,
    ),
}  # fmt: skip


@pytest.fixture(scope="module", params=list(SERVERS))
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    kind = str(request.param)
    if kind == "llama.cpp":
        require_llama_cpp()
    with _llama_cpp() if kind == "llama.cpp" else _devstack() as (url, _proc):
        yield SERVERS[kind](url)


@pytest.fixture
async def client() -> AsyncIterator[Callable[..., LLMServerClient]]:
    """``client(url, retries=None, **llm_settings)``: an LLMServerClient, closed after the test."""
    made: list[LLMServerClient] = []

    def make(url: str, retries: list[str] | None = None, **settings: Any) -> LLMServerClient:
        base = {"adaptive": False, "timeout_s": 60.0, "backoff_initial_s": 0.05, "backoff_max_s": 0.2}
        on_retry = retries.append if retries is not None else None
        c = LLMServerClient(LLMSettings(url=url, **{**base, **settings}), on_retry=on_retry)
        made.append(c)
        return c

    yield make
    for c in made:
        await c.close()


def greedy(max_new_tokens: int, stop: list[str] | None = None) -> GenerationParams:
    return GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0, seed=1, stop=stop or [])


# -- what the server offers ------------------------------------------------------------------------------------


def test_discovery_finds_health_limits_and_token_counts(server: Server) -> None:
    with LLMServerClient(LLMSettings(url=server.url + "/v1")) as c:  # an OpenAI-style base URL works as well
        info = c.fetch_info()
        caps = c.capabilities
        assert caps is not None and (caps.server, caps.health_path, caps.limits_source) == server.discovered
        assert info.model_id and caps.api == "chat"
        assert c.tokenize_source.endswith(f"({server.tokenize})")
        one, two = c.count(["Paris", "Paris is the capital of France, on the Seine."])
        assert 0 < one < two


def test_settings_give_limits_the_server_does_not(server: Server) -> None:
    with LLMServerClient(LLMSettings(url=server.url, max_total_tokens=512, max_input_tokens=400)) as c:
        info = c.fetch_info()
        assert (info.max_input_tokens, info.max_total_tokens) == (400, 512)
        assert c.capabilities is not None and c.capabilities.limits_source == "settings"


def test_a_gguf_tokenizer_counts_as_llama_cpp_does(server: Server) -> None:
    if server.kind != "llama.cpp":
        pytest.skip("the GGUF file is llama.cpp's model")
    from workers.adapters.tokenizers import LocalTokenizerCounter

    texts = ["Paris is the capital of France.", "def f(x):\n    return x ** 2  # ünïcödé"]
    local = LocalTokenizerCounter(llamacpp.SMOLLM2_GGUF)
    with LLMServerClient(LLMSettings(url=server.url)) as c:
        assert local.count(texts) == c.count(texts)


# -- generation ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["chat", "text_generation"])
async def test_with_and_without_streaming_the_answer_is_the_same(
    server: Server, client: Callable[..., LLMServerClient], api: str
) -> None:
    if api not in server.apis:
        pytest.skip(f"{server.kind} has no {api} API")
    streamed = await client(server.url, api=api, stream=True).generate(MESSAGES, greedy(12))
    whole = await client(server.url, api=api, stream=False).generate(MESSAGES, greedy(12))
    assert streamed.text.strip() and streamed.text == whole.text
    assert streamed.finish_reason == whole.finish_reason == "length"
    assert 0 < streamed.ttft_ms <= streamed.total_ms
    assert streamed.attempts == whole.attempts == 1


async def test_usage_counts_and_max_tokens_reached(server: Server, client: Callable[..., LLMServerClient]) -> None:
    c = client(server.url, stream=False)
    whole = await c.generate(MESSAGES, greedy(5))
    assert (whole.finish_reason, whole.completion_tokens) == ("length", 5)
    assert whole.prompt_tokens > sum(c.count([m.content for m in MESSAGES]))  # the chat template's tokens too
    streamed = await client(server.url).generate(MESSAGES, greedy(5))
    assert (streamed.finish_reason, streamed.completion_tokens) == ("length", 5)  # counted when not sent
    assert streamed.prompt_tokens == (whole.prompt_tokens if server.stream_usage else 0)


@pytest.mark.parametrize("stream", [True, False])
async def test_stop_text_split_across_chunks_is_never_in_the_answer(
    server: Server, client: Callable[..., LLMServerClient], stream: bool
) -> None:
    """Issue 14, finding 1: TGI returns the stop text, OpenAI-style servers do not; ragstream never does."""
    for api in server.apis:
        c = client(server.url, api=api, stream=stream)
        full = (await c.generate(MESSAGES, greedy(16))).text
        # A stop sequence across a token boundary: the end of one word, the space, the start of the next.
        spaces = [m.start() for m in re.finditer(r"(?<=\w\w) (?=\w\w)", full)]
        assert spaces, f"premise: the answer has two words: {full!r}"
        i = spaces[len(spaces) // 2]
        stop = full[i - 2 : i + 3]
        deltas: list[tuple[str, int]] = []

        async def on_text(delta: str, attempt: int, into: list[tuple[str, int]] = deltas) -> None:
            into.append((delta, attempt))

        gen = await c.generate(MESSAGES, greedy(16, stop=["never in the text", stop]), on_text)
        assert gen.text == full[: full.index(stop)], (api, stop, full)
        assert stop not in gen.text and gen.finish_reason == "stop"
        # Issue 13: the text passed on as it streams is the answer, without the stop text, in one attempt
        assert "".join(d for d, _ in deltas) == gen.text and {n for _, n in deltas} == {1}
        assert len(deltas) > (1 if stream else 0)


# -- failures -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
async def test_an_over_long_prompt_is_a_permanent_error_without_retry(
    server: Server, client: Callable[..., LLMServerClient], stream: bool
) -> None:
    retries: list[str] = []
    c = client(server.url, retries, stream=stream, max_attempts=3)
    with pytest.raises(LLMValidationError, match=server.too_long):
        await c.generate(TOO_LONG, greedy(8))
    assert retries == []
    assert (await c.generate(MESSAGES, greedy(3))).completion_tokens == 3  # the client is fine afterwards


async def test_a_server_that_is_down_is_retried_then_fails_retryable(
    server: Server, client: Callable[..., LLMServerClient]
) -> None:
    retries: list[str] = []
    with server.start() as (url, proc):
        c = client(url, retries, max_attempts=3, timeout_s=5.0)
        await c.info()
        proc.terminate()
        proc.wait(timeout=10)
        t0 = time.monotonic()
        with pytest.raises(LLMRetryableError, match="connection failed|unavailable"):
            await c.generate(MESSAGES, greedy(4))
    assert len(retries) == 2  # three attempts in all, then the error: bounded
    assert time.monotonic() - t0 < 5.0


# -- a chat template that refuses the system role (issue 14, finding 2) -------------------------------------------

#: Gemma-style: a system message is refused with raise_exception (TGI answers 422 "Template error").
NO_SYSTEM_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def no_system_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a chat template that refuses the system role."""
    model = tmp_path_factory.mktemp("llm") / "no-system-lm"
    shutil.copytree(build_tiny_model(TINY_LM_DIR), model)
    (model / "chat_template.jinja").write_text(NO_SYSTEM_TEMPLATE)
    return model


def _engine_args(model: Path) -> list[str]:
    limits = ["--max-input-tokens", "200", "--max-total-tokens", "256"]
    return ["--model", str(model), *limits, "--generation-threads", "1"]


@pytest.fixture(scope="module")
def no_system_server(no_system_model: Path) -> Iterator[str]:
    """The devstack server (transformers engine) with that model."""
    with tgi_server(["--engine", "transformers", *_engine_args(no_system_model)], start_timeout_s=180) as (url, _proc):
        yield url


async def test_a_template_without_system_role_is_detected_once_and_folded(
    no_system_server: str, client: Callable[..., LLMServerClient], caplog: pytest.LogCaptureFixture
) -> None:
    url = no_system_server
    native_retries: list[str] = []
    with pytest.raises(LLMValidationError, match="System role not supported"):
        await client(url, native_retries, system_role="native").generate(MESSAGES, greedy(6))
    assert native_retries == []

    caplog.set_level(logging.INFO, logger="workers.adapters.llm_server")
    auto = client(url)
    assert (await auto.info()) and auto.system_role == "auto"
    first = await auto.generate(MESSAGES, greedy(6))
    again = await auto.generate(MESSAGES, greedy(6))
    assert auto.system_role == "fold" and first.attempts == again.attempts == 1
    switches = [r for r in caplog.records if "system_role=fold from now on" in r.getMessage()]
    assert len(switches) == 1 and switches[0].levelno == logging.WARNING

    folded = await client(url, system_role="fold").generate(MESSAGES, greedy(6))
    assert first.text == again.text == folded.text and first.completion_tokens == 6


def test_the_refusal_is_the_server_s_4xx(no_system_server: str) -> None:
    """Premise of the test above: the server itself refuses a system message, as TGI does (422)."""
    import httpx

    body = {"messages": [m.model_dump() for m in MESSAGES], "max_tokens": 4}
    resp = httpx.post(no_system_server + "/v1/chat/completions", json=body, timeout=30)
    assert resp.status_code == 422 and "System role not supported" in resp.json()["error"]
    body["messages"] = body["messages"][1:]
    assert httpx.post(no_system_server + "/v1/chat/completions", json=body, timeout=30).status_code == 200


async def test_the_in_process_engine_folds_the_same_way(
    no_system_model: Path, no_system_server: str, client: Callable[..., LLMServerClient]
) -> None:
    """The same setting and detection for an engine hosted in the worker (RAG_LLM__ENGINE), same answer."""
    llm = EngineLLM.from_settings(
        LLMSettings(engine="transformers", engine_args=shlex.join(_engine_args(no_system_model)), adaptive=False)
    )
    try:
        gen = await llm.generate(MESSAGES, greedy(6))
        assert llm.system_role == "fold" and gen.attempts == 1
    finally:
        await llm.close()
    remote = await client(no_system_server, system_role="fold").generate(MESSAGES, greedy(6))
    assert gen.text == remote.text
