"""The one client of the LLM server: limits, token counting and generation, for TGI and OpenAI-compatible servers.

Both the retriever (``/info`` limits, ``/tokenize`` counts for prompt budgets) and the generator (generation)
use :class:`LLMServerClient`. Generation goes through ``huggingface_hub.AsyncInferenceClient``, one of TGI's
two APIs chosen by ``RAG_LLM__API``:

* ``chat``: the Messages API (``/v1/chat/completions``, OpenAI-compatible, so vLLM and SGLang work too);
* ``text_generation``: TGI's native ``/generate_stream``; chat messages are rendered into one prompt
  string with :func:`render_plain_prompt` (the server applies no chat template on this route).

Calls stream tokens, so time to first token (TTFT) and tokens/s are measured on our side. Upstream errors
are translated here (:func:`classify`) into :class:`LLMOverloadedError`, :class:`LLMLoadingError`,
:class:`LLMTimeoutError` (retryable) and :class:`LLMValidationError`, :class:`LLMStreamError` (permanent for this
request); retries are bounded by the ``llm`` :class:`workers.retry.RetryPolicy`. The bound on calls in flight, the
timeout and the retry loop are :func:`workers.adapters.llm_calls.generate_with_retries`, shared with the in-process
engine adapter. Nothing connects at import time: the HTTP clients are created on first use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
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
from workers.adapters.interfaces import Generation, ServerInfo
from workers.adapters.llm_calls import error_for_status, generate_with_retries
from workers.contracts.errors import (
    ConfigError,
    GenerationError,
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


def classify(exc: BaseException) -> GenerationError:
    """Translate an exception from ``huggingface_hub``/``httpx`` into a ragstream generation error."""
    if isinstance(exc, GenerationError):
        return exc
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
        return error_for_status(exc.response.status_code if exc.response is not None else None, str(exc))
    if isinstance(exc, TextGenerationError):  # an error event inside a stream (generation/incomplete/unknown)
        return LLMStreamError(f"error inside the LLM stream: {exc}")
    if isinstance(exc, httpx.TransportError | ConnectionError | OSError):
        return LLMTimeoutError(f"LLM server connection failed: {type(exc).__name__}: {exc}")
    return LLMStreamError(f"unexpected LLM client error: {type(exc).__name__}: {exc}")


class LLMServerClient:
    """The LLM server, seen from ragstream: ``/info`` limits, ``/tokenize`` counts and streamed generation.

    Generation has a bound on calls in flight (:func:`~workers.adapters.concurrency.build_limiter`) and bounded
    retries (``retry``, default the ``llm`` settings' attempts and backoff), both run by
    :func:`~workers.adapters.llm_calls.generate_with_retries`; token counting and ``/info`` are single calls whose
    failures are translated (retried, when at all, by the caller's policy).

    Args:
        settings: URL, token, API flavour, timeout, bound on requests in flight, retry bounds.
        client: an ``AsyncInferenceClient``; built from ``settings`` on first use if omitted.
        http: a sync ``httpx.Client`` for ``/info`` and ``/tokenize`` (tests pass one with a ``MockTransport``);
            created on first use and owned if omitted.
        on_retry: called with the error type's name each time a generation is retried (metrics hook).
        limiter: bound on generation calls in flight; default :func:`build_limiter` of ``settings``.
        retry: the retry policy of one generation; default from ``settings``.
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
        self.api: str = settings.api
        self.url = settings.url.rstrip("/")
        self._client = client
        self._http = http
        self._owns_http = http is None
        self.limiter: ConcurrencyLimiter = limiter or build_limiter(settings)
        self.retry = retry or RetryPolicy(settings.max_attempts, settings.backoff_initial_s, settings.backoff_max_s)
        self.max_attempts = self.retry.max_attempts
        self._on_retry = on_retry
        self._info: ServerInfo | None = None

    # -- clients, created on first use

    @property
    def client(self) -> AsyncInferenceClient:
        """The ``AsyncInferenceClient`` of generation calls."""
        if self._client is None:
            s = self.settings
            token = s.token.get_secret_value() if s.token is not None else None
            self._client = AsyncInferenceClient(base_url=s.url, token=token, timeout=s.timeout_s)
        return self._client

    def _http_client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(timeout=10.0)
        return self._http

    async def close(self) -> None:
        """Close the HTTP sessions (inference client, and the sync client if this object created it)."""
        if self._client is not None:
            await self._client.close()
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
        """The cached ``/info`` (``None`` until :meth:`info` or :meth:`fetch_info` succeeded once)."""
        return self._info

    def fetch_info(self) -> ServerInfo:
        """Read (once) and return ``GET /info``: model id and revision, token limits (blocking).

        Raises:
            ServiceUnavailableError: the server cannot be reached or answers with an error.
        """
        if self._info is None:
            url = f"{self.url}/info"
            try:
                data = _request_json(self._http_client(), "GET", url)
            except (RetryableError, PermanentError) as exc:
                raise ServiceUnavailableError(f"cannot read the LLM server's limits: {exc}") from exc
            if not isinstance(data, dict):
                raise ServiceUnavailableError(f"GET {url} returned {type(data).__name__}, expected a JSON object")
            self._info = parse_server_info(data)
            log.info(
                "llm server url=%s model=%s max_input_tokens=%s max_total_tokens=%s",
                self.url,
                self._info.model_id,
                self._info.max_input_tokens,
                self._info.max_total_tokens,
            )
        return self._info

    async def info(self) -> ServerInfo:
        """:meth:`fetch_info` without blocking the event loop.

        Raises:
            ServiceUnavailableError: the server cannot be reached.
        """
        if self._info is None:
            await asyncio.to_thread(self.fetch_info)
        assert self._info is not None
        return self._info

    # -- token counting

    def count(self, texts: list[str]) -> list[int]:
        """Tokens the server's tokenizer makes of each text (``POST /tokenize``, one request per text; blocking).

        Raises:
            RetryableError: the server cannot be reached, times out, or answers 429/5xx.
            PermanentError: the server answers another 4xx or a body that is not a JSON list.
        """
        out: list[int] = []
        for text in texts:
            data = _request_json(self._http_client(), "POST", f"{self.url}/tokenize", json={"inputs": text})
            if not isinstance(data, list):
                raise PermanentError(f"/tokenize returned {type(data).__name__}, expected a JSON list of tokens")
            out.append(len(data))
        return out

    # -- generation

    async def generate(self, messages: list[ChatMessage], params: GenerationParams) -> Generation:
        """Generate an answer, retrying retryable failures up to ``max_attempts`` calls in all.

        Args:
            messages: the chat messages built by the retriever.
            params: sampling parameters; ``max_new_tokens`` bounds the answer (tokens).

        Returns:
            The finished :class:`Generation`.

        Raises:
            LLMRetryableError: still failing after ``max_attempts`` calls (overloaded, loading, timeout).
            LLMValidationError: the server rejected the input (no retry).
            LLMStreamError: an error event arrived inside the stream (no partial answer is returned).
        """
        call = self._chat if self.api == "chat" else self._text_generation
        return await generate_with_retries(
            lambda t0: call(messages, params, t0),
            limiter=self.limiter,
            retry=self.retry,
            timeout_s=self.settings.timeout_s,
            classify=classify,
            on_retry=self._on_retry,
        )

    async def _chat(self, messages: list[ChatMessage], params: GenerationParams, t0: float) -> Generation:
        stream = await self.client.chat_completion(
            [dict(m.model_dump()) for m in messages],
            stream=True,
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stop=params.stop or None,
            stream_options=ChatCompletionInputStreamOptions(include_usage=True),
        )
        return await _collect(stream, t0, _chat_chunk)

    async def _text_generation(self, messages: list[ChatMessage], params: GenerationParams, t0: float) -> Generation:
        do_sample = bool(params.temperature) or params.top_p is not None
        stream = await self.client.text_generation(
            render_plain_prompt(messages),
            stream=True,
            details=True,
            max_new_tokens=params.max_new_tokens,
            temperature=params.temperature or None,
            top_p=params.top_p,
            seed=params.seed,
            stop=params.stop or None,
            do_sample=do_sample,
        )
        return await _collect(stream, t0, _tg_chunk)


@dataclass
class _Acc:
    parts: list[str]
    tokens: int = 0
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_id: str | None = None
    ttft: float | None = None


def _chat_chunk(chunk: Any, acc: _Acc) -> None:
    if getattr(chunk, "model", None):
        acc.model_id = chunk.model
    for choice in chunk.choices or []:
        delta = choice.delta
        if delta is not None and delta.content:
            acc.parts.append(delta.content)
            acc.tokens += 1
        if choice.finish_reason:
            acc.finish_reason = choice.finish_reason
    usage = getattr(chunk, "usage", None)
    if usage is not None:
        acc.prompt_tokens = usage.prompt_tokens or 0
        acc.completion_tokens = usage.completion_tokens or 0


def _tg_chunk(chunk: Any, acc: _Acc) -> None:
    tok = chunk.token
    if tok is not None and not tok.special:
        acc.parts.append(tok.text)
    acc.tokens += 1
    if chunk.details is not None:
        acc.finish_reason = str(chunk.details.finish_reason)
        acc.completion_tokens = chunk.details.generated_tokens or acc.tokens


async def _collect(stream: Any, t0: float, on_chunk: Callable[[Any, _Acc], None]) -> Generation:
    acc = _Acc(parts=[])
    async for chunk in stream:
        if acc.ttft is None:
            acc.ttft = time.perf_counter()
        on_chunk(chunk, acc)
    t1 = time.perf_counter()
    return Generation(
        text="".join(acc.parts),
        finish_reason=acc.finish_reason,
        prompt_tokens=acc.prompt_tokens,
        completion_tokens=acc.completion_tokens or acc.tokens,
        model_id=acc.model_id,
        ttft_ms=((acc.ttft or t1) - t0) * 1000.0,
        total_ms=(t1 - t0) * 1000.0,
        attempts=1,
    )


def _request_json(client: httpx.Client, method: str, url: str, **kwargs: Any) -> Any:
    try:
        resp = client.request(method, url, **kwargs)
    except httpx.TimeoutException as exc:
        raise RetryableError(f"{method} {url} timed out: {exc}") from exc
    except httpx.TransportError as exc:
        raise RetryableError(f"{method} {url} failed: {exc}") from exc
    if resp.status_code == 429 or resp.status_code >= 500:
        raise RetryableError(f"{method} {url} answered {resp.status_code}: {resp.text[:200]}")
    if resp.status_code >= 400:
        raise PermanentError(f"{method} {url} answered {resp.status_code}: {resp.text[:200]}")
    try:
        return resp.json()
    except ValueError as exc:
        raise PermanentError(f"{method} {url} returned a body that is not JSON: {resp.text[:200]!r}") from exc


def parse_server_info(info: dict[str, Any]) -> ServerInfo:
    """Read a TGI ``/info`` JSON body.

    Current TGI names the limits ``max_input_tokens`` and ``max_total_tokens``; older versions use
    ``max_input_length``. Missing or non-integer limits become ``None``; a missing model id ``"unknown"``.
    """

    def _int(*keys: str) -> int | None:
        for key in keys:
            val = info.get(key)
            if isinstance(val, int) and not isinstance(val, bool) and val > 0:
                return val
        return None

    model = info.get("model_id")
    sha = info.get("model_sha")
    return ServerInfo(
        model_id=model if isinstance(model, str) else "unknown",
        model_sha=sha if isinstance(sha, str) else None,
        max_input_tokens=_int("max_input_tokens", "max_input_length"),
        max_total_tokens=_int("max_total_tokens"),
        max_concurrent_requests=_int("max_concurrent_requests"),
    )
