"""The one client of an LLM server: limits, token counting and generation, for TGI and every OpenAI-compatible
server (vLLM, SGLang, llama.cpp, OpenAI).

Both the retriever (token limits and counts for prompt budgets) and the generator (generation) use
:class:`LLMServerClient`. What the server offers (health route, model name, limits, API, tokenize route) is
discovered once by :mod:`workers.adapters.llm_discovery` and logged with where each piece came from. Generation
goes through ``huggingface_hub.AsyncInferenceClient``, one of two APIs (``RAG_LLM__API``, default what the server
offers):

* ``chat``: the Messages API (``/v1/chat/completions``, OpenAI-compatible: TGI, vLLM, SGLang, llama.cpp, OpenAI);
* ``text_generation``: TGI's native ``/generate_stream``; chat messages are rendered into one prompt
  string with :func:`render_plain_prompt` (the server applies no chat template on this route).

What servers do differently is made the same here (:mod:`workers.adapters.llm_text`): the answer never contains a
stop sequence (TGI includes it, OpenAI-style servers do not; it may arrive split across chunks), finish reasons are
OpenAI's (``stop``, ``length``), usage is read from the stream when the server sends it (``stream_options``) and
counted otherwise, error bodies of every shape are read for the message, and a chat template that refuses the
system role makes the client fold the system prompt into the first user turn (``RAG_LLM__SYSTEM_ROLE``).

Calls stream tokens (``RAG_LLM__STREAM``), so time to first token (TTFT) and tokens/s are measured on our side.
Upstream errors are translated here (:func:`classify`) into :class:`LLMOverloadedError`, :class:`LLMLoadingError`,
:class:`LLMTimeoutError` (retryable: 429, 5xx, timeouts, a server that is down) and :class:`LLMValidationError`,
:class:`LLMStreamError` (permanent for this request: other 4xx, an error inside the stream); retries are bounded by
the ``llm`` :class:`workers.retry.RetryPolicy`. The bound on calls in flight, the timeout and the retry loop are
:func:`workers.adapters.llm_calls.generate_with_retries`, shared with the in-process engine adapter. Nothing
connects at import time: the HTTP clients are created on first use.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from huggingface_hub import AsyncInferenceClient, ChatCompletionInputStreamOptions
from huggingface_hub.errors import (
    HfHubHTTPError,
    InferenceTimeoutError,
    OverloadedError,
    TextGenerationError,
)
from huggingface_hub.errors import (
    ValidationError as HFValidationError,
)

from workers.adapters.concurrency import ConcurrencyLimiter, build_limiter
from workers.adapters.interfaces import Generation, OnText, ServerInfo
from workers.adapters.llm_calls import error_for_status, generate_with_retries
from workers.adapters.llm_discovery import (
    Capabilities,
    Probe,
    TokenizeRoute,
    discover,
    find_tokenize_route,
    parse_server_info,
)
from workers.adapters.llm_stream import Acc, OnDelta, chat_chunk, collect, read_usage, tg_chunk, whole
from workers.adapters.llm_text import (
    StopTextFilter,
    error_message,
    fold_system,
    rejects_system_role,
)
from workers.contracts.errors import (
    ConfigError,
    GenerationError,
    LLMLoadingError,
    LLMOverloadedError,
    LLMStreamError,
    LLMTimeoutError,
    LLMValidationError,
    PermanentError,
    RetryableError,
    ServiceUnavailableError,
)
from workers.contracts.messages import ChatMessage, GenerationParams
from workers.retry import RetryPolicy
from workers.settings import LLMSettings

__all__ = ["LLMServerClient", "check_hub_online", "classify", "parse_server_info", "render_plain_prompt"]

log = logging.getLogger(__name__)


def check_hub_online() -> None:
    """Refuse to start when ``HF_HUB_OFFLINE`` is set: huggingface_hub then refuses every HTTP call,
    including those to our own LLM server, and each request would fail.

    Raises:
        ConfigError: ``HF_HUB_OFFLINE`` is on in this process.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise ConfigError(
            "HF_HUB_OFFLINE is set: huggingface_hub then refuses all HTTP calls, including to the LLM server at "
            "RAG_LLM__URL; unset it for the generator (only the retriever loads local model files)"
        )


def render_plain_prompt(messages: list[ChatMessage]) -> str:
    """Render chat messages as one prompt for TGI's ``/generate`` (role-labelled blocks, then ``Assistant:``)."""
    parts = [f"{m.role.capitalize()}: {m.content}" for m in messages]
    return "\n\n".join(parts) + "\n\nAssistant:"


def base_url(url: str) -> str:
    """The server's base URL: no trailing slash, no trailing ``/v1`` (OpenAI clients' ``base_url`` style)."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _http_detail(exc: HfHubHTTPError) -> str:
    """The server's own error message (any body shape), else the exception's text."""
    resp = exc.response
    try:
        body = resp.text if resp is not None else ""
    except httpx.ResponseNotRead:
        body = ""
    return error_message(body) if body else str(exc).splitlines()[0]


def classify(exc: BaseException) -> GenerationError:
    """Translate an exception from ``huggingface_hub``/``httpx`` (or discovery) into a ragstream generation error.

    429 → overloaded, 5xx → loading (both retryable, on every server), a timeout or a connection that fails →
    timeout (retryable), other 4xx → validation (permanent), an error event inside a stream → stream error
    (permanent). The message is the server's own, read from any of the error body shapes.
    """
    if isinstance(exc, GenerationError):
        return exc
    if isinstance(exc, ServiceUnavailableError):  # discovery during a generation: the server is not there
        return LLMLoadingError(f"LLM server unavailable: {exc}")
    if isinstance(exc, TextGenerationError) and isinstance(exc.__cause__, HfHubHTTPError):
        # huggingface_hub wraps an HTTP error whose TGI error_type it does not know (e.g. 503 "loading") in
        # UnknownError; the HTTP status underneath says what it is.
        if not isinstance(exc, OverloadedError | HFValidationError):
            return classify(exc.__cause__)
    if isinstance(exc, InferenceTimeoutError | asyncio.TimeoutError | TimeoutError | httpx.TimeoutException):
        return LLMTimeoutError(f"LLM call timed out: {exc}")
    if isinstance(exc, OverloadedError):
        return LLMOverloadedError(f"LLM server overloaded: {exc}")
    if isinstance(exc, HFValidationError):
        return LLMValidationError(f"LLM server rejected the input: {exc}")
    if isinstance(exc, HfHubHTTPError):
        return error_for_status(exc.response.status_code if exc.response is not None else None, _http_detail(exc))
    if isinstance(exc, TextGenerationError):  # an error event inside a stream (generation/incomplete/unknown)
        return LLMStreamError(f"error inside the LLM stream: {exc}")
    if isinstance(exc, httpx.TransportError | ConnectionError | OSError):
        return LLMTimeoutError(f"LLM server connection failed: {type(exc).__name__}: {exc}")
    return LLMStreamError(f"unexpected LLM client error: {type(exc).__name__}: {exc}")


class LLMServerClient:
    """The LLM server, seen from ragstream: discovered capabilities, token counts and streamed generation.

    Generation has a bound on calls in flight (:func:`~workers.adapters.concurrency.build_limiter`) and bounded
    retries (``retry``, default the ``llm`` settings' attempts and backoff), both run by
    :func:`~workers.adapters.llm_calls.generate_with_retries`; token counting and discovery are single calls whose
    failures are translated (retried, when at all, by the caller's policy).

    Args:
        settings: URL, token, API, model name, limits, system-role mode, streaming, timeout, bound on requests in
            flight, retry bounds.
        client: an ``AsyncInferenceClient``; built from ``settings`` on first use if omitted.
        http: a sync ``httpx.Client`` for discovery and token counting (tests pass one with a ``MockTransport``);
            created on first use and owned if omitted.
        on_retry: called with the error type's name each time a generation is retried (metrics hook).
        limiter: bound on generation calls in flight; default :func:`build_limiter` of ``settings``.
        retry: the retry policy of one generation; default from ``settings``.

    Attributes:
        api: ``chat`` or ``text_generation`` (``llm.api``; with ``auto``, what the server offers once discovered).
        system_role: ``native``, ``fold`` or ``auto`` (``auto`` becomes ``fold`` when the server refuses the role).
    """

    def __init__(
        self,
        settings: LLMSettings,
        *,
        client: AsyncInferenceClient | None = None,
        http: httpx.Client | None = None,
        on_retry: Callable[[str], None] | None = None,
        limiter: ConcurrencyLimiter | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.api: str = settings.api if settings.api != "auto" else "chat"
        self.system_role: str = settings.system_role
        self.url = base_url(settings.url)
        self._client = client
        self._once_client: AsyncInferenceClient | None = None
        self._http = http
        self._owns_http = http is None
        self.limiter: ConcurrencyLimiter = limiter or build_limiter(settings)
        self.retry = retry or RetryPolicy(settings.max_attempts, settings.backoff_initial_s, settings.backoff_max_s)
        self.max_attempts = self.retry.max_attempts
        self._on_retry = on_retry
        self._caps: Capabilities | None = None
        self._tokenize: TokenizeRoute | None = None
        self._lock = threading.Lock()

    # -- clients, created on first use

    @property
    def client(self) -> AsyncInferenceClient:
        """The ``AsyncInferenceClient`` of generation calls."""
        if self._client is None:
            s = self.settings
            token = s.token.get_secret_value() if s.token is not None else None
            self._client = AsyncInferenceClient(base_url=self.url, token=token, timeout=s.timeout_s)
        return self._client

    @property
    def once_client(self) -> AsyncInferenceClient:
        """An ``AsyncInferenceClient`` on connections of their own (``Connection: close``), for the one call without
        streaming that follows a stream which broke off: the server may still be closing the broken connection."""
        if self._once_client is None:
            s = self.settings
            token = s.token.get_secret_value() if s.token is not None else None
            self._once_client = AsyncInferenceClient(
                base_url=self.url, token=token, timeout=s.timeout_s, headers={"Connection": "close"}
            )
        return self._once_client

    def _http_client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(timeout=10.0)
        return self._http

    def _probe(self) -> Probe:
        token = self.settings.token
        headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token is not None else {}
        return Probe(self._http_client(), self.url, headers)

    async def close(self) -> None:
        """Close the HTTP sessions (inference client, and the sync client if this object created it)."""
        for client in (self._client, self._once_client):
            if client is not None:
                await client.close()
        self.close_sync()

    def close_sync(self) -> None:
        """Close the sync HTTP client if this object created it."""
        if self._owns_http and self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> LLMServerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_sync()

    # -- what the server says about itself

    @property
    def server_info(self) -> ServerInfo | None:
        """Model and limits (``None`` until :meth:`info` or :meth:`fetch_info` succeeded once)."""
        return self._caps.info if self._caps is not None else None

    @property
    def capabilities(self) -> Capabilities | None:
        """Everything discovered (``None`` until :meth:`fetch_info` succeeded once)."""
        return self._caps

    def fetch_info(self) -> ServerInfo:
        """Discover (once) and return the server's model and token limits (blocking); logged once.

        Raises:
            ServiceUnavailableError: the server cannot be reached, answers 429/5xx, or has neither ``/health`` nor
                ``/v1/models``.
        """
        with self._lock:
            if self._caps is None:
                caps = discover(self._probe(), self.settings)
                self.api = caps.api
                self._caps = caps
                log.info(
                    "llm server url=%s kind=%s model=%s health=%s api=%s (%s) system_role=%s",
                    self.url,
                    caps.server,
                    caps.served_model or caps.info.model_id,
                    caps.health_path,
                    caps.api,
                    caps.api_source,
                    self.system_role,
                )
                log.info(
                    "llm limits max_input_tokens=%s max_total_tokens=%s from %s",
                    caps.info.max_input_tokens,
                    caps.info.max_total_tokens,
                    {"none": "nowhere (neither the server nor RAG_LLM__MAX_TOTAL_TOKENS says them)"}.get(
                        caps.limits_source, caps.limits_source
                    ),
                )
            return self._caps.info

    async def info(self) -> ServerInfo:
        """:meth:`fetch_info` without blocking the event loop.

        Raises:
            ServiceUnavailableError: the server cannot be reached.
        """
        if self._caps is None:
            await asyncio.to_thread(self.fetch_info)
        assert self._caps is not None
        return self._caps.info

    # -- token counting

    @property
    def tokenize_source(self) -> str:
        """Where :meth:`count` counts (``POST /extras/tokenize (llama-cpp-python)``); discovers the route if needed.

        Raises:
            ConfigError: the server has no tokenize route that ragstream knows.
            RetryableError: the server cannot be reached.
        """
        route = self._tokenize_route()
        return f"{self.url}: POST {route.path} ({route.name})"

    def _tokenize_route(self) -> TokenizeRoute:
        with self._lock:
            if self._tokenize is None:
                model = self._caps.served_model if self._caps else self.settings.model or None
                try:
                    route, tried = find_tokenize_route(self._probe(), model)
                except ServiceUnavailableError as exc:
                    raise RetryableError(str(exc)) from exc
                if route is None:
                    raise ConfigError(
                        f"the LLM server at {self.url} counts no tokens: none of the tokenize routes ragstream knows "
                        f"answered ({'; '.join(tried)}). Set RAG_LLM__TOKENIZER to the model's tokenizer: a "
                        "tokenizer.json, a model folder, a GGUF file or a hub id in the local cache"
                    )
                self._tokenize = route
            return self._tokenize

    def count(self, texts: list[str]) -> list[int]:
        """Tokens the server's tokenizer makes of each text (its tokenize route, one request per text; blocking).

        Raises:
            RetryableError: the server cannot be reached, times out, or answers 429/5xx.
            PermanentError: the server answers another 4xx or a body of another shape; ConfigError when it has no
                tokenize route at all.
        """
        route = self._tokenize_route()
        model = self._caps.served_model if self._caps else self.settings.model or None
        out: list[int] = []
        for text in texts:
            data = _request_json(self._http_client(), "POST", self.url + route.path, json=route.body(text, model))
            n = route.count(data)
            if n is None:
                raise PermanentError(f"{route.path} returned {type(data).__name__}, not the {route.name} shape")
            out.append(n)
        return out

    # -- generation

    async def generate(
        self, messages: list[ChatMessage], params: GenerationParams, on_text: OnText | None = None
    ) -> Generation:
        """Generate an answer, retrying retryable failures up to ``max_attempts`` calls in all.

        Args:
            messages: the chat messages built by the retriever.
            params: sampling parameters; ``max_new_tokens`` bounds the answer (tokens); the answer ends before the
                first of ``stop``, whichever server answers.
            on_text: awaited with each new piece of the answer's text as it streams in (a stop text is never
                passed on) and the number of the call it belongs to (a retried call starts its text anew).

        Returns:
            The finished :class:`Generation` (finish reason ``stop`` or ``length``).

        Raises:
            LLMRetryableError: still failing after ``max_attempts`` calls (overloaded, loading, timeout, down).
            LLMValidationError: the server rejected the input (no retry).
            LLMStreamError: an error event arrived inside the stream (no partial answer is returned).
        """
        return await generate_with_retries(
            lambda t0, on_delta: self._attempt(messages, params, t0, on_delta),
            limiter=self.limiter,
            retry=self.retry,
            timeout_s=self.settings.timeout_s,
            classify=classify,
            on_retry=self._on_retry,
            on_text=on_text,
        )

    async def _attempt(
        self, messages: list[ChatMessage], params: GenerationParams, t0: float, on_delta: OnDelta | None
    ) -> Generation:
        if self._caps is None:
            await self.info()
        if self.api != "chat":
            return await self._text_generation(messages, params, t0, on_delta)
        if self.system_role == "fold":
            return await self._chat(fold_system(messages), params, t0, on_delta)
        try:
            return await self._chat(messages, params, t0, on_delta)
        except HfHubHTTPError as exc:
            if self.system_role != "auto" or not any(m.role == "system" for m in messages):
                raise
            detail = _http_detail(exc)
            if not rejects_system_role(detail):
                raise
            self.system_role = "fold"
            log.warning(
                "llm system_role=fold from now on: the server refused a system message (%s); system prompts go "
                "into the first user turn (set RAG_LLM__SYSTEM_ROLE=fold to start so)",
                detail[:200],
            )
            return await self._chat(fold_system(messages), params, time.perf_counter(), on_delta)

    async def _chat(
        self, messages: list[ChatMessage], params: GenerationParams, t0: float, on_delta: OnDelta | None
    ) -> Generation:
        if self.settings.stream:
            gen = await self._chat_call(messages, params, t0, on_delta, stream=True)
            if gen is not None:
                return gen
            # The stream ended before any token and without a finish reason: llama-cpp-python refuses a prompt so
            # (an over-long one, a template error) after answering 200. Asked without streaming, the server answers
            # with its status (400 context_length_exceeded → permanent), or with the answer.
            log.debug("llm stream ended empty without a finish reason; asking again without streaming")
        gen = await self._chat_call(messages, params, t0, on_delta, stream=False)
        assert gen is not None
        return gen

    async def _chat_call(
        self,
        messages: list[ChatMessage],
        params: GenerationParams,
        t0: float,
        on_delta: OnDelta | None,
        *,
        stream: bool,
    ) -> Generation | None:
        client = self.client if stream or not self.settings.stream else self.once_client
        answer: Any = await client.chat_completion(
            [dict(m.model_dump()) for m in messages],
            model=self._caps.served_model if self._caps else None,
            stream=stream,
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stop=params.stop or None,
            stream_options=ChatCompletionInputStreamOptions(include_usage=True) if stream else None,
        )
        if stream:
            return await collect(answer, t0, chat_chunk, params.stop, on_delta)
        acc = Acc(StopTextFilter(params.stop))
        acc.ttft = time.perf_counter()
        choice = answer.choices[0] if answer.choices else None
        acc.finish_reason = choice.finish_reason if choice is not None else None
        acc.model_id = answer.model or None
        read_usage(answer.usage, acc)
        return await whole(acc, (choice.message.content or "") if choice is not None else "", t0, on_delta)

    async def _text_generation(
        self, messages: list[ChatMessage], params: GenerationParams, t0: float, on_delta: OnDelta | None
    ) -> Generation:
        do_sample = bool(params.temperature) or params.top_p is not None
        for stream in (True, False) if self.settings.stream else (False,):
            client = self.client if stream or not self.settings.stream else self.once_client
            answer: Any = await client.text_generation(
                render_plain_prompt(messages),
                stream=stream,
                details=True,
                max_new_tokens=params.max_new_tokens,
                temperature=params.temperature or None,
                top_p=params.top_p,
                seed=params.seed,
                stop=params.stop or None,
                do_sample=do_sample,
            )
            if stream:
                gen = await collect(answer, t0, tg_chunk, params.stop, on_delta)
                if gen is not None:
                    return gen
                continue  # an empty stream without details: ask once without streaming (see _chat)
            acc = Acc(StopTextFilter(params.stop))
            acc.ttft = time.perf_counter()
            if answer.details is not None:
                acc.finish_reason = str(answer.details.finish_reason)
                acc.completion_tokens = answer.details.generated_tokens or 0
            return await whole(acc, answer.generated_text, t0, on_delta)
        raise AssertionError("unreachable: the last pass does not stream")


def _request_json(client: httpx.Client, method: str, url: str, **kwargs: Any) -> Any:
    try:
        resp = client.request(method, url, **kwargs)
    except httpx.TimeoutException as exc:
        raise RetryableError(f"{method} {url} timed out: {exc}") from exc
    except httpx.TransportError as exc:
        raise RetryableError(f"{method} {url} failed: {exc}") from exc
    if resp.status_code == 429 or resp.status_code >= 500:
        raise RetryableError(f"{method} {url} answered {resp.status_code}: {error_message(resp.text)[:200]}")
    if resp.status_code >= 400:
        raise PermanentError(f"{method} {url} answered {resp.status_code}: {error_message(resp.text)[:200]}")
    try:
        return resp.json()
    except ValueError as exc:
        raise PermanentError(f"{method} {url} returned a body that is not JSON: {resp.text[:200]!r}") from exc
