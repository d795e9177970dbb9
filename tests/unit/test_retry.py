"""The retry policy: bounded attempts, only retryable errors, the stop hook, policies built from settings."""

from __future__ import annotations

import asyncio

import pytest

from workers.contracts.errors import PermanentError, RetryableError
from workers.retry import RetryPolicy, retry_policies
from workers.settings import LLMSettings, RetrySettings, Settings


def test_a_retryable_error_is_retried_up_to_max_attempts_then_raised() -> None:
    calls: list[int] = []
    seen: list[tuple[str, int]] = []

    async def fail() -> int:
        calls.append(1)
        raise RetryableError("still away")

    policy = RetryPolicy(3, 0.001, 0.002)
    with pytest.raises(RetryableError, match="still away"):
        asyncio.run(policy.call(fail, on_retry=lambda exc, n, _s: seen.append((str(exc), n))))
    assert len(calls) == 3 and seen == [("still away", 1), ("still away", 2)]


def test_a_permanent_error_is_raised_at_once() -> None:
    calls: list[int] = []

    def fail() -> int:
        calls.append(1)
        raise PermanentError("bad input")

    with pytest.raises(PermanentError):
        RetryPolicy(5, 0.001, 0.002).call_sync(fail)
    assert calls == [1]


def test_success_after_failures_returns_the_value() -> None:
    left = [2]

    def flaky() -> str:
        if left[0]:
            left[0] -= 1
            raise RetryableError("not yet")
        return "ok"

    assert RetryPolicy(3, 0.001, 0.002).call_sync(flaky) == "ok"


def test_the_stop_hook_ends_the_retries_early() -> None:
    calls: list[int] = []

    def fail() -> None:
        calls.append(1)
        raise RetryableError("away")

    with pytest.raises(RetryableError):
        RetryPolicy(10, 0.001, 0.002).call_sync(fail, stop=lambda: len(calls) >= 2)
    assert len(calls) == 2


def test_policies_come_from_the_settings() -> None:
    s = Settings(llm=LLMSettings(max_attempts=2, backoff_initial_s=0.1), retry=RetrySettings(handler_max_attempts=5))
    p = retry_policies(s)
    assert (p.llm.max_attempts, p.llm.initial_s) == (2, 0.1)
    assert p.handler.max_attempts == 5 and p.store.max_attempts == 6
    # the monitor's trace writes retry every failure (it acks nothing unwritten), the others only retryable ones
    assert any(issubclass(PermanentError, c) for c in p.database.retry_on)
    assert not any(issubclass(PermanentError, c) for c in p.handler.retry_on)


def test_zero_attempts_is_refused() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(0)
