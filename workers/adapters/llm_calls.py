"""What every LLM adapter does around one generation: the bound on calls in flight, the timeout, TTFT, retries.

Shared by the HTTP client (:class:`workers.adapters.llm_server.LLMServerClient`) and the in-process engine
(:class:`workers.adapters.llm_engine.EngineLLM`); each supplies one attempt and its error translation, so both
retry the same errors the same number of times and measure time to first token from the same instant. No I/O
library is imported here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from workers.adapters.concurrency import ConcurrencyLimiter
from workers.adapters.interfaces import Generation, OnText
from workers.contracts.errors import (
    GenerationError,
    LLMLoadingError,
    LLMOverloadedError,
    LLMValidationError,
)
from workers.retry import RetryPolicy

#: Called with each new piece of an attempt's text (stop text already cut).
OnDelta = Callable[[str], Awaitable[None]]
#: One attempt: called with ``t0`` (``time.perf_counter()`` seconds, taken once the attempt holds its slot) and the
#: callback for its text (``None``: nobody listens); returns the Generation with ``ttft_ms``/``total_ms`` measured
#: from ``t0``.
Attempt = Callable[[float, OnDelta | None], Awaitable[Generation]]


def error_for_status(status: int | None, detail: str, source: str = "LLM server") -> GenerationError:
    """The ragstream error of an HTTP(-like) status from an LLM: retryable or permanent.

    429 → :class:`LLMOverloadedError`; 502/503/504 and other 5xx → :class:`LLMLoadingError` (retryable);
    4xx and an unknown status → :class:`LLMValidationError` (permanent).

    Args:
        status: The status (None when unknown).
        detail: What the LLM said, for the message.
        source: Who said it ("LLM server", "LLM engine"), for the message.
    """
    if status == 429:
        return LLMOverloadedError(f"{source} overloaded (429): {detail}")
    if status in (502, 503, 504):
        return LLMLoadingError(f"{source} unavailable ({status}): {detail}")
    if status in (400, 413, 422):
        return LLMValidationError(f"{source} rejected the input ({status}): {detail}")
    if status is not None and status >= 500:
        return LLMLoadingError(f"{source} error ({status}): {detail}")
    return LLMValidationError(f"{source} error ({status}): {detail}")


async def generate_with_retries(
    attempt: Attempt,
    *,
    limiter: ConcurrencyLimiter,
    retry: RetryPolicy,
    timeout_s: float,
    classify: Callable[[BaseException], GenerationError],
    on_retry: Callable[[str], None] | None = None,
    on_text: OnText | None = None,
) -> Generation:
    """Run ``attempt`` until it succeeds, fails for good, or ``retry.max_attempts`` attempts are made.

    Each attempt waits for a slot of ``limiter``, runs within ``timeout_s`` and reports its outcome to the
    limiter (its TTFT when it succeeds, an overload on :class:`LLMOverloadedError`). Any exception is translated
    with ``classify``; retryable ones are retried with ``retry``'s jittered backoff.

    Args:
        attempt: One call to the LLM (see :data:`Attempt`).
        limiter: Bound on calls in flight.
        retry: Attempts and backoff.
        timeout_s: Seconds one attempt may take (then :class:`~workers.contracts.errors.LLMTimeoutError`, if
            ``classify`` maps ``TimeoutError`` so).
        classify: Translates an exception into a ragstream generation error.
        on_retry: Called with the error's class name before each retry (metrics).
        on_text: Awaited with each piece of text an attempt streams and the attempt's number (1 = the first call;
            a retried attempt starts its text anew).

    Returns:
        The successful attempt's Generation, with ``attempts`` = calls made.

    Raises:
        LLMRetryableError: still failing after ``retry.max_attempts`` attempts.
        GenerationError: a permanent failure (validation, stream error), not retried.
    """
    attempts = 0

    async def once() -> Generation:
        nonlocal attempts
        attempts += 1
        number = attempts
        on_delta: OnDelta | None = None
        if on_text is not None:
            listener = on_text

            async def on_delta(delta: str) -> None:
                await listener(delta, number)

        async with limiter.slot() as ticket:
            t0 = time.perf_counter()
            try:
                gen = await asyncio.wait_for(attempt(t0, on_delta), timeout=timeout_s)
            except Exception as exc:  # translated, never leaked
                err = classify(exc)
                if isinstance(err, LLMOverloadedError):
                    ticket.overloaded()
                if err is exc:
                    raise
                raise err from exc
            ticket.ok(gen.ttft_ms / 1000.0)
            return gen

    def before_retry(exc: BaseException, _attempt: int, _sleep: float) -> None:
        if on_retry is not None:
            on_retry(type(exc).__name__)

    gen = await retry.call(once, on_retry=before_retry)
    return Generation(**{**gen.__dict__, "attempts": attempts})
