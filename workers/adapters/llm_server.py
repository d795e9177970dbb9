"""LLM client adapter: ``huggingface_hub.AsyncInferenceClient`` against a TGI-compatible server.

ML client code only (no Kafka). Both of TGI's APIs are supported, chosen by ``RAG_LLM__API``:

* ``chat``: the Messages API (``/v1/chat/completions``, OpenAI-compatible, so vLLM and SGLang work too);
* ``text_generation``: TGI's native ``/generate_stream``; chat messages are rendered into one prompt
  string with :func:`render_plain_prompt` (the server applies no chat template on this route).

Calls stream tokens, so time to first token (TTFT) and tokens/s are measured on our side. Upstream errors
are translated here into :class:`LLMOverloadedError`, :class:`LLMLoadingError`, :class:`LLMTimeoutError`
(retryable) and :class:`LLMValidationError`, :class:`LLMStreamError` (permanent for this request); retries
are bounded (``max_attempts``) with jittered exponential backoff (tenacity).
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
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from workers.adapters.concurrency import AdaptiveLimiter, ConcurrencyLimiter, FixedLimiter
from workers.contracts.errors import (
    ConfigError,
    GenerationError,
    PermanentError,
    RetryableError,
    ServiceUnavailableError,
)
from workers.contracts.messages import ChatMessage, GenerationParams
from workers.settings import LLMSettings

log = logging.getLogger(__name__)


class LLMRetryableError(GenerationError, RetryableError):
    """A generation failure worth retrying later."""

    error_class = "llm_retryable"


class LLMOverloadedError(LLMRetryableError):
    """HTTP 429 / TGI ``overloaded``: the server has too many requests in flight."""

    error_class = "overloaded"


class LLMLoadingError(LLMRetryableError):
    """HTTP 503: the model is still loading (or the server is briefly unavailable)."""

    error_class = "model_loading"


class LLMTimeoutError(LLMRetryableError):
    """No complete answer within ``RAG_LLM__TIMEOUT_S`` seconds, or the connection failed."""

    error_class = "llm_timeout"


class LLMValidationError(GenerationError, PermanentError):
    """HTTP 422/400 / TGI ``validation``: the input is too long or a parameter is invalid."""

    error_class = "llm_validation"


class LLMStreamError(GenerationError, PermanentError):
    """The server sent an error event inside a 200 stream; the partial text is discarded."""

    error_class = "llm_stream_error"


@dataclass(frozen=True)
class Generation:
    """One finished generation.

    Attributes:
        text: the generated answer.
        finish_reason: server's reason (``length``, ``stop``, ``eos_token``, ``stop_sequence``).
        prompt_tokens: input tokens as counted by the server (0 when it did not say).
        completion_tokens: generated tokens (server count, else stream events counted).
        model_id: the server's model id (``/info`` or the response's ``model`` field).
        ttft_ms: time to first token, ms, measured from the request start of the last attempt.
        total_ms: wall time of the successful attempt, ms.
        attempts: calls made, retries included.
    """

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    model_id: str | None
    ttft_ms: float
    total_ms: float
    attempts: int


@dataclass(frozen=True)
class ServerInfo:
    """What the server's ``GET /info`` says (TGI field names)."""

    model_id: str
    model_sha: str | None
    max_input_tokens: int | None
    max_total_tokens: int | None
    max_concurrent_requests: int | None


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
        status = exc.response.status_code if exc.response is not None else None
        if status == 429:
            return LLMOverloadedError(f"LLM server overloaded (429): {exc}")
        if status in (502, 503, 504):
            return LLMLoadingError(f"LLM server unavailable ({status}): {exc}")
        if status in (400, 413, 422):
            return LLMValidationError(f"LLM server rejected the input ({status}): {exc}")
        if status is not None and status >= 500:
            return LLMLoadingError(f"LLM server error ({status}): {exc}")
        return LLMValidationError(f"LLM server error ({status}): {exc}")
    if isinstance(exc, TextGenerationError):  # an error event inside a stream (generation/incomplete/unknown)
        return LLMStreamError(f"error inside the LLM stream: {exc}")
    if isinstance(exc, httpx.TransportError | ConnectionError | OSError):
        return LLMTimeoutError(f"LLM server connection failed: {type(exc).__name__}: {exc}")
    return LLMStreamError(f"unexpected LLM client error: {type(exc).__name__}: {exc}")


def build_limiter(settings: LLMSettings) -> ConcurrencyLimiter:
    """The bound on calls in flight that ``settings`` ask for: adaptive within
    ``[min_in_flight, max_in_flight]`` starting at ``initial_in_flight``, or fixed at ``max_in_flight``."""
    if settings.adaptive:
        return AdaptiveLimiter(
            initial=settings.initial_in_flight, min_limit=settings.min_in_flight, max_limit=settings.max_in_flight
        )
    return FixedLimiter(settings.max_in_flight)


class LLMClient:
    """Generates answers through ``AsyncInferenceClient`` with bounded concurrency and bounded retries.

    Args:
        settings: URL, API flavour, timeout, bound on requests in flight, retry policy.
        client: an ``AsyncInferenceClient``; built from ``settings`` if omitted.
        on_retry: called with the error class each time a retryable failure is retried (metrics hook).
        limiter: bound on calls in flight; default :func:`build_limiter` of ``settings``.
    """

    def __init__(
        self,
        settings: LLMSettings,
        client: AsyncInferenceClient | None = None,
        on_retry: Callable[[str], None] | None = None,
        limiter: ConcurrencyLimiter | None = None,
    ) -> None:
        self.settings = settings
        token = settings.token.get_secret_value() if settings.token is not None else None
        self.client = client or AsyncInferenceClient(base_url=settings.url, token=token, timeout=settings.timeout_s)
        self.limiter: ConcurrencyLimiter = limiter or build_limiter(settings)
        self._on_retry = on_retry
        self._info: ServerInfo | None = None

    async def close(self) -> None:
        """Close the HTTP sessions of the inference client."""
        await self.client.close()

    @property
    def server_info(self) -> ServerInfo | None:
        """The cached ``/info`` (``None`` until :meth:`info` succeeded once)."""
        return self._info

    async def info(self) -> ServerInfo:
        """Read and cache ``GET /info``.

        Raises:
            LLMTimeoutError: the server cannot be reached.
        """
        if self._info is None:
            try:
                async with httpx.AsyncClient(timeout=10.0) as http:
                    resp = await http.get(self.settings.url.rstrip("/") + "/info")
                    resp.raise_for_status()
                    data: dict[str, Any] = resp.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise LLMTimeoutError(f"LLM server /info not reachable at {self.settings.url}: {exc}") from exc
            self._info = ServerInfo(
                model_id=str(data.get("model_id", "unknown")),
                model_sha=data.get("model_sha"),
                max_input_tokens=data.get("max_input_tokens") or data.get("max_input_length"),
                max_total_tokens=data.get("max_total_tokens"),
                max_concurrent_requests=data.get("max_concurrent_requests"),
            )
        return self._info

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
        attempts = 0
        s = self.settings
        retrying = AsyncRetrying(
            stop=stop_after_attempt(s.max_attempts),
            wait=wait_random_exponential(multiplier=s.backoff_initial_s, max=s.backoff_max_s),
            retry=retry_if_exception_type(LLMRetryableError),
            reraise=True,
            before_sleep=lambda rs: (
                self._on_retry(type(rs.outcome.exception()).__name__) if self._on_retry and rs.outcome else None
            ),
        )
        async for attempt in retrying:
            with attempt:
                attempts += 1
                gen = await self._once(messages, params)
                return Generation(**{**gen.__dict__, "attempts": attempts})
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(self, messages: list[ChatMessage], params: GenerationParams) -> Generation:
        async with self.limiter.slot() as ticket:
            t0 = time.perf_counter()
            try:
                call = self._chat if self.settings.api == "chat" else self._text_generation
                gen = await asyncio.wait_for(call(messages, params, t0), timeout=self.settings.timeout_s)
            except Exception as exc:  # translated, never leaked
                err = classify(exc)
                if isinstance(err, LLMOverloadedError):
                    ticket.overloaded()
                raise err from exc
            ticket.ok(gen.ttft_ms / 1000.0)
            return gen

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


# --------------------------------------------------------------------------- token counting and limits


class ServerTokenizeCounter:
    """Counts tokens with the LLM server's TGI ``POST /tokenize`` (one request per text).

    Args:
        base_url: server root, e.g. ``http://127.0.0.1:8080``.
        client: an ``httpx.Client`` to use (tests pass one with a ``MockTransport``); when ``None`` one is
            created and owned (close it with :meth:`close`).
        timeout_s: per-request timeout (seconds) of an owned client.

    Raises (from :meth:`count`):
        RetryableError: the server cannot be reached, times out, or answers 429/5xx.
        PermanentError: the server answers another 4xx or a body that is not a JSON list.
    """

    def __init__(self, base_url: str, *, client: httpx.Client | None = None, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._owns = client is None
        self._client = client if client is not None else httpx.Client(timeout=timeout_s)

    def count(self, texts: list[str]) -> list[int]:
        """Return the number of tokens the server's tokenizer makes of each text."""
        out: list[int] = []
        for text in texts:
            data = _request_json(self._client, "POST", f"{self.base_url}/tokenize", json={"inputs": text})
            if not isinstance(data, list):
                raise PermanentError(f"/tokenize returned {type(data).__name__}, expected a JSON list of tokens")
            out.append(len(data))
        return out

    def close(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owns:
            self._client.close()

    def __enter__(self) -> ServerTokenizeCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


@dataclass(frozen=True)
class ServerLimits:
    """Token limits of the LLM server (TGI ``/info``).

    Attributes:
        max_input_tokens: most prompt tokens the server accepts (``None`` if it does not say).
        max_total_tokens: most prompt + generated tokens of one request (``None`` if it does not say).
        model_id: the served model's id, if given.
    """

    max_input_tokens: int | None
    max_total_tokens: int | None
    model_id: str | None = None


def parse_server_info(info: dict[str, Any]) -> ServerLimits:
    """Read the limits from a TGI ``/info`` JSON body.

    Current TGI names them ``max_input_tokens`` and ``max_total_tokens``; older versions use
    ``max_input_length``. Missing or non-integer values become ``None``.
    """

    def _int(*keys: str) -> int | None:
        for key in keys:
            val = info.get(key)
            if isinstance(val, int) and not isinstance(val, bool) and val > 0:
                return val
        return None

    model = info.get("model_id")
    return ServerLimits(
        max_input_tokens=_int("max_input_tokens", "max_input_length"),
        max_total_tokens=_int("max_total_tokens"),
        model_id=model if isinstance(model, str) else None,
    )


def fetch_server_limits(base_url: str, *, client: httpx.Client | None = None, timeout_s: float = 10.0) -> ServerLimits:
    """Ask a TGI-compatible server for its token limits (``GET /info``).

    Args:
        base_url: server root, e.g. ``http://127.0.0.1:8080``.
        client: an ``httpx.Client`` to use; a short-lived one is created when ``None``.
        timeout_s: request timeout (seconds) of a created client.

    Returns:
        The server's limits; fields the server does not report are ``None``.

    Raises:
        ServiceUnavailableError: the server cannot be reached or answers with an error.
    """
    url = f"{base_url.rstrip('/')}/info"
    own = client is None
    http = client if client is not None else httpx.Client(timeout=timeout_s)
    try:
        data = _request_json(http, "GET", url)
    except (RetryableError, PermanentError) as exc:
        raise ServiceUnavailableError(f"cannot read the LLM server's limits: {exc}") from exc
    finally:
        if own:
            http.close()
    if not isinstance(data, dict):
        raise ServiceUnavailableError(f"GET {url} returned {type(data).__name__}, expected a JSON object")
    limits = parse_server_info(data)
    log.info(
        "llm server limits url=%s model=%s max_input_tokens=%s max_total_tokens=%s",
        base_url,
        limits.model_id,
        limits.max_input_tokens,
        limits.max_total_tokens,
    )
    return limits
