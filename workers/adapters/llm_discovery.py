"""What an LLM server offers, discovered at start-up rather than assumed (issue 16).

ragstream talks to TGI, vLLM, SGLang, llama.cpp's servers and OpenAI itself through one client
(:class:`workers.adapters.llm_server.LLMServerClient`). They share the chat API (``/v1/chat/completions``) and
differ in everything around it; this module finds out, once, what the server at ``llm.url`` has:

* **health**: ``GET /health`` (TGI, vLLM, SGLang, llama.cpp), else ``GET /v1/models`` (llama-cpp-python, OpenAI);
* **model and token limits**: the settings ``llm.max_total_tokens`` / ``llm.max_input_tokens`` when set, else
  ``GET /info`` (TGI: ``max_input_tokens``, ``max_total_tokens``), else ``GET /v1/models`` (vLLM and SGLang:
  ``max_model_len``), else ``GET /props`` (llama.cpp's own server: ``n_ctx``); the model name sent in requests
  is ``llm.model``, else the first id of ``/v1/models``;
* **the API**: ``llm.api`` when set, else ``chat`` (the Messages API), except on a TGI older than 1.4, which only
  has ``/generate`` (``text_generation``);
* **token counting** (only where prompts are built: the retriever): the first of the tokenize routes in
  :data:`TOKENIZE_ROUTES` that counts a probe text, each with its own request and response shape.

Every result says where it came from, so the worker can log it once at start. Probes are plain HTTP GETs and
POSTs with a sync ``httpx.Client``; an unreachable server raises :class:`ServiceUnavailableError`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from workers.adapters.interfaces import ServerInfo
from workers.contracts.errors import ServiceUnavailableError
from workers.settings import LLMSettings

log = logging.getLogger(__name__)

#: Text counted to recognize a tokenize route (any tokenizer makes at least one token of it).
PROBE_TEXT = "Hello, world"
#: Fields of a ``/v1/models`` entry that give the context length (tokens): vLLM and SGLang, then others.
_MODEL_LEN_FIELDS = ("max_model_len", "context_length", "max_context_length", "context_window")


@dataclass(frozen=True)
class TokenizeRoute:
    """One server's tokenize endpoint: where it is, what it takes, how its answer counts tokens.

    Attributes:
        name: Whose shape this is (``tgi``, ``vllm``, ``llama.cpp``, ``llama-cpp-python``).
        path: The route, e.g. ``/tokenize``.
        body: ``body(text, model)`` → the JSON request.
        count: ``count(json_answer)`` → tokens, or None when the answer is not of this shape.
    """

    name: str
    path: str
    body: Callable[[str, str | None], dict[str, Any]]
    count: Callable[[Any], int | None]


def _count_list(data: Any) -> int | None:
    return len(data) if isinstance(data, list) else None


def _count_tokens_field(data: Any) -> int | None:
    if isinstance(data, dict):
        if isinstance(data.get("tokens"), list):
            return len(data["tokens"])
        if isinstance(data.get("count"), int):
            return int(data["count"])
    return None


#: Tokenize routes in the order they are tried.
TOKENIZE_ROUTES: tuple[TokenizeRoute, ...] = (
    # TGI and the devstack server: {"inputs"} → [{"id", "text", "start", "stop"}, ...]
    TokenizeRoute("tgi", "/tokenize", lambda t, m: {"inputs": t}, _count_list),
    # vLLM and SGLang: {"model", "prompt"} → {"count", "max_model_len", "tokens"}
    TokenizeRoute(
        "vllm",
        "/tokenize",
        lambda t, m: {"prompt": t, "add_special_tokens": True, **({"model": m} if m else {})},
        _count_tokens_field,
    ),
    # llama.cpp's own server (llama-server): {"content"} → {"tokens"}
    TokenizeRoute("llama.cpp", "/tokenize", lambda t, m: {"content": t, "add_special": True}, _count_tokens_field),
    # llama-cpp-python's server: {"input"} → {"tokens"}
    TokenizeRoute(
        "llama-cpp-python",
        "/extras/tokenize",
        lambda t, m: {"input": t, **({"model": m} if m else {})},
        _count_tokens_field,
    ),
)


@dataclass(frozen=True)
class Capabilities:
    """What the server offers, and where each piece came from.

    Attributes:
        info: Model id and revision, token limits (``None`` where nothing said them).
        limits_source: Where the limits came from (``settings``, ``/info``, ``/v1/models``, ``/props``, ``none``).
        served_model: The model name to send in OpenAI-style requests (None: the server does not need one).
        api: ``chat`` or ``text_generation``.
        api_source: Why that API (``settings``, or what the server showed).
        health_path: The route that says the server is up (``/health`` or ``/v1/models``).
        server: What the server looks like (``tgi`` when it has ``/info``, else ``openai``).
    """

    info: ServerInfo
    limits_source: str
    served_model: str | None
    api: str
    api_source: str
    health_path: str
    server: str


class Probe:
    """GETs and POSTs of one discovery, with one rule for failures.

    Args:
        http: The client (its timeout applies to each probe).
        url: The server's base URL (no trailing slash).
        headers: Sent with each probe (the bearer token, when set).
    """

    def __init__(self, http: httpx.Client, url: str, headers: dict[str, str] | None = None) -> None:
        self.http = http
        self.url = url
        self.headers = headers or {}

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """``(status, JSON body or None)`` of one request; a non-JSON body is None.

        Raises:
            ServiceUnavailableError: the server cannot be reached, times out, or answers 5xx/429 (it is there but
                not able to say what it offers now).
        """
        try:
            resp = self.http.request(method, self.url + path, json=body, headers=self.headers)
        except httpx.HTTPError as exc:
            raise ServiceUnavailableError(
                f"LLM server {self.url} cannot be reached: {type(exc).__name__}: {exc}"
            ) from exc
        if resp.status_code == 429 or resp.status_code in (502, 503, 504):
            raise ServiceUnavailableError(
                f"LLM server {self.url}: {method} {path} answered {resp.status_code}: {resp.text[:200]}"
            )
        try:
            data = resp.json()
        except ValueError:
            data = None
        return resp.status_code, data


def discover(probe: Probe, settings: LLMSettings) -> Capabilities:
    """Find out the server's health route, model, token limits and API (see the module docstring).

    Raises:
        ServiceUnavailableError: the server cannot be reached, or neither ``/health`` nor ``/v1/models`` answers.
    """
    status, _ = probe.call("GET", "/health")
    health = "/health"
    models_status, models = probe.call("GET", "/v1/models")
    if status != 200:
        if models_status != 200:
            raise ServiceUnavailableError(
                f"LLM server {probe.url} is not healthy: GET /health answered {status}, "
                f"GET /v1/models answered {models_status}"
            )
        health = "/v1/models"
    entries = models.get("data") if isinstance(models, dict) else None
    first = entries[0] if isinstance(entries, list) and entries and isinstance(entries[0], dict) else {}

    info_status, info_body = probe.call("GET", "/info")
    tgi = info_status == 200 and isinstance(info_body, dict) and "model_id" in info_body
    info = parse_server_info(info_body) if tgi else ServerInfo(model_id=str(first.get("id") or "unknown"))
    source = "/info" if tgi and (info.max_total_tokens or info.max_input_tokens) else "none"
    if source == "none":
        model_len = _positive_int(first, *_MODEL_LEN_FIELDS)
        if model_len is not None:
            info = _with_limits(info, None, model_len)
            source = "/v1/models"
    if source == "none":
        props_status, props = probe.call("GET", "/props")
        n_ctx = _n_ctx(props) if props_status == 200 else None
        if n_ctx is not None:
            info = _with_limits(info, None, n_ctx)
            source = "/props"
    if settings.max_total_tokens is not None or settings.max_input_tokens is not None:
        total = settings.max_total_tokens or info.max_total_tokens
        inputs = settings.max_input_tokens or info.max_input_tokens
        if source != "none" and (total, inputs) != (info.max_total_tokens, info.max_input_tokens):
            log.warning(
                "llm limits from settings (max_total_tokens=%s max_input_tokens=%s) differ from the server's "
                "%s (max_total_tokens=%s max_input_tokens=%s); the settings win",
                total,
                inputs,
                source,
                info.max_total_tokens,
                info.max_input_tokens,
            )
        info = _with_limits(info, inputs, total)
        source = "settings"

    served = settings.model or (str(first["id"]) if first.get("id") else None)
    if settings.api != "auto":
        api, api_source = settings.api, "settings"
    elif tgi and _version_below(info_body.get("version"), (1, 4)):
        api, api_source = "text_generation", f"TGI {info_body.get('version')} has no Messages API"
    else:
        api, api_source = "chat", "/v1/chat/completions, offered by every supported server"
    return Capabilities(
        info=info,
        limits_source=source,
        served_model=served,
        api=api,
        api_source=api_source,
        health_path=health,
        server="tgi" if tgi else "openai",
    )


def find_tokenize_route(probe: Probe, model: str | None) -> tuple[TokenizeRoute | None, list[str]]:
    """The first route of :data:`TOKENIZE_ROUTES` that counts :data:`PROBE_TEXT` as one or more tokens.

    Returns:
        The route (None when none counts), and what each route tried answered (``"POST /tokenize (tgi): 404"``).

    Raises:
        ServiceUnavailableError: the server cannot be reached.
    """
    tried: list[str] = []
    for route in TOKENIZE_ROUTES:
        status, data = probe.call("POST", route.path, route.body(PROBE_TEXT, model))
        if status == 200 and (route.count(data) or 0) > 0:
            return route, tried
        tried.append(f"POST {route.path} ({route.name}): {status}{'' if status != 200 else ' without tokens'}")
    return None, tried


def parse_server_info(info: dict[str, Any]) -> ServerInfo:
    """Read a TGI ``/info`` JSON body.

    Current TGI names the limits ``max_input_tokens`` and ``max_total_tokens``; older versions use
    ``max_input_length``. Missing or non-integer limits become ``None``; a missing model id ``"unknown"``.
    """
    model = info.get("model_id")
    sha = info.get("model_sha")
    return ServerInfo(
        model_id=model if isinstance(model, str) else "unknown",
        model_sha=sha if isinstance(sha, str) else None,
        max_input_tokens=_positive_int(info, "max_input_tokens", "max_input_length"),
        max_total_tokens=_positive_int(info, "max_total_tokens"),
        max_concurrent_requests=_positive_int(info, "max_concurrent_requests"),
    )


def _positive_int(data: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        val = data.get(key)
        if isinstance(val, int) and not isinstance(val, bool) and val > 0:
            return val
    return None


def _n_ctx(props: Any) -> int | None:
    if not isinstance(props, dict):
        return None
    settings = props.get("default_generation_settings")
    found = _positive_int(settings, "n_ctx") if isinstance(settings, dict) else None
    return found or _positive_int(props, "n_ctx")


def _with_limits(info: ServerInfo, max_input: int | None, max_total: int | None) -> ServerInfo:
    return ServerInfo(
        model_id=info.model_id,
        model_sha=info.model_sha,
        max_input_tokens=max_input,
        max_total_tokens=max_total,
        max_concurrent_requests=info.max_concurrent_requests,
    )


def _version_below(version: Any, bound: tuple[int, int]) -> bool:
    if not isinstance(version, str):
        return False
    try:
        parts = tuple(int(p) for p in version.split("-")[0].split(".")[:2])
    except ValueError:
        return False
    return parts < bound
