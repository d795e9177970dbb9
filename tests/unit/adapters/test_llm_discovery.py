"""Discovery of what an LLM server offers, from the routes and shapes each kind of server has
(workers/adapters/llm_discovery.py, issue 16). The servers' answers are written down from their documentation
and sources as fakes (httpx.MockTransport): this is the pure parsing and decision logic; the real servers we can
run here (the devstack server and llama.cpp's) are in tests/integration/test_llm_contract.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from workers.adapters.llm_server import LLMServerClient, base_url
from workers.contracts.errors import ConfigError, RetryableError, ServiceUnavailableError
from workers.settings import LLMSettings

Routes = dict[tuple[str, str], Callable[[dict[str, Any]], httpx.Response]]


def _server(routes: Routes, seen: list[str] | None = None) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(f"{request.method} {request.url.path}")
        body = json.loads(request.content) if request.content else {}
        route = routes.get((request.method, request.url.path))
        return route(body) if route else httpx.Response(404, json={"detail": "Not Found"})

    return httpx.Client(transport=httpx.MockTransport(handler))


def ok(data: Any = None) -> Callable[[dict[str, Any]], httpx.Response]:
    return lambda body: httpx.Response(200, json=data)


TGI: Routes = {
    ("GET", "/health"): ok(),
    ("GET", "/info"): ok({"model_id": "m/tgi", "version": "3.3.6", "max_input_tokens": 3072, "max_total_tokens": 4096}),
    ("GET", "/v1/models"): ok({"object": "list", "data": [{"id": "m/tgi", "object": "model"}]}),
    ("POST", "/tokenize"): lambda b: (
        httpx.Response(200, json=[{"id": 1, "text": w} for w in b["inputs"].split()])
        if "inputs" in b
        else httpx.Response(422, json={"error": "missing inputs", "error_type": "validation"})
    ),
}
VLLM: Routes = {
    ("GET", "/health"): ok(),
    ("GET", "/v1/models"): ok({"data": [{"id": "Qwen/Qwen2.5-7B-Instruct", "max_model_len": 32768}]}),
    ("POST", "/tokenize"): lambda b: (
        httpx.Response(200, json={"count": 2, "max_model_len": 32768, "tokens": [1, 2]})
        if "prompt" in b
        else httpx.Response(400, json={"error": {"message": "prompt: Field required", "type": "BadRequestError"}})
    ),
}
LLAMA_CPP_PYTHON: Routes = {
    ("GET", "/v1/models"): ok({"object": "list", "data": [{"id": "/models/smol.gguf", "owned_by": "me"}]}),
    ("POST", "/tokenize"): lambda b: httpx.Response(404, json={"detail": "Not Found"}),
    ("POST", "/extras/tokenize"): lambda b: httpx.Response(200, json={"tokens": [1] * len(b["input"].split())}),
}
LLAMA_SERVER: Routes = {  # llama.cpp's own server: /props and {"content"} → {"tokens"}; {"prompt"} → no tokens
    ("GET", "/health"): ok({"status": "ok"}),
    ("GET", "/v1/models"): ok({"data": [{"id": "smol.gguf", "meta": {"n_ctx_train": 8192}}]}),
    ("GET", "/props"): ok({"default_generation_settings": {"n_ctx": 4096}}),
    ("POST", "/tokenize"): lambda b: httpx.Response(200, json={"tokens": [5, 6, 7] if "content" in b else []}),
}
OPENAI: Routes = {("GET", "/v1/models"): ok({"data": [{"id": "gpt-4o-mini", "object": "model"}]})}


def _client(routes: Routes, seen: list[str] | None = None, **settings: Any) -> LLMServerClient:
    return LLMServerClient(LLMSettings(url="http://llm:8000", **settings), http=_server(routes, seen))


def test_tgi_limits_from_info_and_its_tokenize_shape() -> None:
    with _client(TGI) as c:
        info = c.fetch_info()
        caps = c.capabilities
        assert caps is not None and (caps.server, caps.limits_source, caps.health_path) == ("tgi", "/info", "/health")
        assert (info.model_id, info.max_input_tokens, info.max_total_tokens) == ("m/tgi", 3072, 4096)
        assert c.api == "chat" and caps.served_model == "m/tgi"
        assert c.count(["a b c"]) == [3] and "(tgi)" in c.tokenize_source


def test_old_tgi_without_messages_api_gets_text_generation() -> None:
    routes = {**TGI, ("GET", "/info"): ok({"model_id": "m", "version": "1.3.4", "max_total_tokens": 2048})}
    with _client(routes) as c:
        c.fetch_info()
        assert c.api == "text_generation"
    with _client(routes, api="chat") as c:  # a user's setting wins
        c.fetch_info()
        assert c.api == "chat"


def test_vllm_limits_from_models_and_its_tokenize_shape() -> None:
    with _client(VLLM) as c:
        info = c.fetch_info()
        caps = c.capabilities
        assert caps is not None and (caps.server, caps.limits_source) == ("openai", "/v1/models")
        assert (info.max_input_tokens, info.max_total_tokens) == (None, 32768)
        assert caps.served_model == info.model_id == "Qwen/Qwen2.5-7B-Instruct"
        assert c.count(["x"]) == [2] and "(vllm)" in c.tokenize_source


def test_llama_cpp_python_has_no_health_no_limits_and_extras_tokenize() -> None:
    seen: list[str] = []
    with _client(LLAMA_CPP_PYTHON, seen) as c:
        info = c.fetch_info()
        caps = c.capabilities
        assert caps is not None and (caps.health_path, caps.limits_source) == ("/v1/models", "none")
        assert (info.model_id, info.max_total_tokens) == ("/models/smol.gguf", None)
        assert c.count(["one two", "three"]) == [2, 1]
        assert "POST /extras/tokenize (llama-cpp-python)" in c.tokenize_source
    assert "GET /props" in seen


def test_llama_server_limits_from_props_and_content_tokenize() -> None:
    with _client(LLAMA_SERVER) as c:
        assert c.fetch_info().max_total_tokens == 4096
        assert c.capabilities is not None and c.capabilities.limits_source == "/props"
        assert c.count(["x"]) == [3] and "(llama.cpp)" in c.tokenize_source  # {"prompt"} gave no tokens: skipped


def test_openai_needs_a_tokenizer_and_limits_from_settings() -> None:
    with _client(OPENAI, max_total_tokens=128_000, token="sk-test") as c:
        info = c.fetch_info()
        assert c.capabilities is not None and c.capabilities.limits_source == "settings"
        assert (info.model_id, info.max_total_tokens) == ("gpt-4o-mini", 128_000)
        with pytest.raises(ConfigError, match="RAG_LLM__TOKENIZER") as err:
            c.count(["x"])
        assert "POST /extras/tokenize (llama-cpp-python): 404" in str(err.value)


def test_settings_win_over_what_the_server_says(caplog: pytest.LogCaptureFixture) -> None:
    with _client(TGI, max_total_tokens=2048, model="served-name") as c:
        info = c.fetch_info()
        assert (info.max_input_tokens, info.max_total_tokens) == (3072, 2048)
        assert c.capabilities is not None and c.capabilities.served_model == "served-name"
    assert "the settings win" in caplog.text


def test_discovery_is_logged_once_with_its_sources(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    with _client(VLLM) as c:
        c.fetch_info()
        c.fetch_info()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("llm limits")]
    assert lines == ["llm limits max_input_tokens=None max_total_tokens=32768 from /v1/models"]


@pytest.mark.parametrize("status", [503, 429])
def test_a_busy_or_unreachable_server_is_unavailable_at_start_and_retryable_when_counting(status: int) -> None:
    routes: Routes = {k: (lambda b: httpx.Response(status, text="busy")) for k in TGI}
    with _client(routes) as c, pytest.raises(ServiceUnavailableError, match=str(status)):
        c.fetch_info()
    with _client(routes) as c, pytest.raises(RetryableError, match=str(status)):
        c.count(["x"])


def test_a_server_without_health_and_models_is_not_healthy() -> None:
    with _client({}) as c, pytest.raises(ServiceUnavailableError, match="not healthy"):
        c.fetch_info()


def test_base_url_accepts_openai_style_v1() -> None:
    assert base_url("http://h:8000/v1/") == base_url("http://h:8000") == "http://h:8000"
