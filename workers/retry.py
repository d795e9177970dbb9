"""Retries, declared once: a bounded policy object built from settings, used by every adapter and the runner.

A :class:`RetryPolicy` says how often a call that failed with a retryable error (:class:`RetryableError`: overload,
loading, timeout, a broker or database briefly away) is tried again, and how long to wait in between: exponential
backoff with full jitter, a wait drawn uniformly from ``[0, min(max_s, initial_s · 2^(n-1))]`` before the n-th
retry (tenacity's ``wait_random_exponential``; full jitter spreads the retries of many replicas, AWS Architecture
Blog, "Exponential Backoff and Jitter"). arq's
``Retry(defer=...)`` / ``max_tries`` is the model: the bound is part of the declaration, not of the call site.
tenacity runs the loop.

:func:`retry_policies` builds the project's policies from :class:`workers.settings.Settings`:

* ``llm``: one generation call (``RAG_LLM__MAX_ATTEMPTS``, ``RAG_LLM__BACKOFF_INITIAL_S``, ``..._MAX_S``);
* ``handler``: a stage's whole micro-batch in the stream runner (``RAG_RETRY__HANDLER_*``; the inputs stay in
  flight meanwhile, so the worker loop pauses its partitions);
* ``store``: one answer-store call (``RAG_RETRY__STORE_*``);
* ``database``: one trace-table write of the monitor (``RAG_RETRY__DATABASE_*``; the monitor acks nothing it has
  not written, so this bound is long).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from workers.contracts.errors import RagError, RetryableError
from workers.settings import Settings

T = TypeVar("T")

#: Called before each retry sleep with the error, the attempt that failed (1-based) and the sleep (s).
OnRetry = Callable[[BaseException, int, float], None]


@dataclass(frozen=True)
class RetryPolicy:
    """How a failing call is retried: at most ``max_attempts`` calls, first included, with jittered backoff.

    Attributes:
        max_attempts: calls in all (1 = no retry).
        initial_s: backoff before the first retry, before jitter (s).
        max_s: cap of one backoff (s).
        retry_on: exception types that are retried; anything else is raised at once.
    """

    max_attempts: int
    initial_s: float = 0.25
    max_s: float = 8.0
    retry_on: tuple[type[BaseException], ...] = (RetryableError,)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")

    def _kwargs(self, on_retry: OnRetry | None, stop: Callable[[], bool] | None) -> dict[str, object]:
        def before_sleep(state: RetryCallState) -> None:
            if on_retry is not None and state.outcome is not None:
                exc = state.outcome.exception()
                sleep = state.next_action.sleep if state.next_action is not None else 0.0
                if exc is not None:
                    on_retry(exc, state.attempt_number, float(sleep))

        after_max = stop_after_attempt(self.max_attempts)

        def stopper(state: RetryCallState) -> bool:
            return bool(after_max(state)) or (stop is not None and stop())

        return {
            "stop": stopper,
            "wait": wait_random_exponential(multiplier=self.initial_s, max=self.max_s),
            "retry": retry_if_exception_type(self.retry_on),
            "reraise": True,
            "before_sleep": before_sleep,
        }

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        on_retry: OnRetry | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> T:
        """Await ``fn()`` until it succeeds, raises a non-retryable error, or the attempts are used up.

        Args:
            fn: the call (a new awaitable each attempt).
            on_retry: called before each backoff sleep (metrics, logs).
            stop: retried no more once it returns True (a worker shutting down).

        Raises:
            whatever the last attempt raised.
        """
        async for attempt in AsyncRetrying(**self._kwargs(on_retry, stop)):  # type: ignore[arg-type]  # typed kwargs
            with attempt:
                return await fn()
        raise AssertionError("unreachable")  # pragma: no cover - reraise=True

    def call_sync(
        self, fn: Callable[[], T], *, on_retry: OnRetry | None = None, stop: Callable[[], bool] | None = None
    ) -> T:
        """:meth:`call` for blocking code (sleeps in the calling thread)."""
        for attempt in Retrying(**self._kwargs(on_retry, stop)):  # type: ignore[arg-type]  # typed kwargs
            with attempt:
                return fn()
        raise AssertionError("unreachable")  # pragma: no cover - reraise=True


@dataclass(frozen=True)
class RetryPolicies:
    """The project's retry policies (see the module docstring)."""

    llm: RetryPolicy
    handler: RetryPolicy
    store: RetryPolicy
    database: RetryPolicy


def retry_policies(settings: Settings) -> RetryPolicies:
    """Build every retry policy from the settings (the one place they are declared)."""
    r = settings.retry
    return RetryPolicies(
        llm=RetryPolicy(settings.llm.max_attempts, settings.llm.backoff_initial_s, settings.llm.backoff_max_s),
        handler=RetryPolicy(r.handler_max_attempts, r.handler_backoff_initial_s, r.handler_backoff_max_s),
        store=RetryPolicy(r.store_max_attempts, r.store_backoff_initial_s, r.store_backoff_max_s),
        # The monitor acks nothing it has not written: every failure of a trace write is retried, not only the
        # transient ones (a batch the database rejects is then written event by event, see MonitorSink.write).
        database=RetryPolicy(
            r.database_max_attempts, r.database_backoff_initial_s, r.database_backoff_max_s, retry_on=(RagError,)
        ),
    )
