"""EngineLLM with the simulated engine in this process (no network): the LLM protocol, limits, stops, retries."""

from __future__ import annotations

import asyncio
import json
import shlex
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from devstack.tgi.generation import ServerLimits
from devstack.tgi.simulated_engine import SimulatedConfig, SimulatedEngine, parse_fault_rules, simple_tokenize
from workers.adapters.interfaces import LLM, LLMTokenCounter
from workers.adapters.llm_engine import EngineLLM
from workers.contracts.errors import (
    ConfigError,
    LLMLoadingError,
    LLMOverloadedError,
    LLMStreamError,
    LLMTimeoutError,
    LLMValidationError,
    ServiceUnavailableError,
)
from workers.contracts.messages import ChatMessage, GenerationParams
from workers.settings import LLMSettings

QUESTION = [ChatMessage(role="system", content="Answer briefly."), ChatMessage(role="user", content="What is a tuple?")]
#: Fast retries; a fixed bound on calls in flight (the adaptive one would start at 16 anyway).
FAST = {"backoff_initial_s": 0.001, "backoff_max_s": 0.005, "adaptive": False, "max_in_flight": 8}


def faults(*rules: dict[str, Any]) -> str:
    """``--faults`` with the simulated engine's rules, quoted for a shell-like command line."""
    return "--faults " + shlex.quote(json.dumps(list(rules)))


def settings(engine_args: str = "", **overrides: Any) -> LLMSettings:
    """``llm`` settings for the simulated engine with small limits and fast timing."""
    base = "--ttft-ms 0 --per-token-ms 0 --max-input-tokens 48 --max-total-tokens 96"
    return LLMSettings(engine="simulated", engine_args=f"{base} {engine_args}", **{**FAST, **overrides})


@pytest.fixture
async def llm() -> AsyncIterator[EngineLLM]:
    adapter = EngineLLM.from_settings(settings(), CollectorRegistry())
    yield adapter
    await adapter.close()


def sim(adapter: EngineLLM) -> SimulatedEngine:
    assert isinstance(adapter.engine, SimulatedEngine)
    return adapter.engine


async def test_from_settings_parses_the_server_command_line() -> None:
    args = "--ttft-ms 7 --per-token-ms 2 --capacity 3 --max-concurrent-requests 5 " + faults({"kind": "hang"})
    adapter = EngineLLM.from_settings(settings(args))
    engine = sim(adapter)
    assert (engine.config.ttft_ms, engine.config.per_token_ms, engine.config.capacity) == (7, 2, 3)
    assert [r.kind for r in engine.schedule.rules] == ["hang"]
    assert adapter.server_info is None
    info = await adapter.info()
    assert adapter.server_info is info
    assert info.model_id == "ragstream/simulated-filler"
    assert (info.max_input_tokens, info.max_total_tokens, info.max_concurrent_requests) == (48, 96, 5)
    assert adapter.api == "engine" and adapter.max_attempts == 4
    await adapter.close()


@pytest.mark.parametrize(
    ("engine", "args"),
    [
        ("nope", ""),
        ("simulated", "--no-such-option"),
        ("simulated", "--max-input-tokens 96"),  # not below --max-total-tokens
        ("simulated", faults({"kind": "sparks"})),
        ("simulated", "--faults '[unterminated"),
    ],
)
def test_from_settings_rejects_bad_configuration(engine: str, args: str) -> None:
    with pytest.raises(ConfigError):
        EngineLLM.from_settings(settings(args).model_copy(update={"engine": engine}))


def test_is_an_llm_and_a_token_counter(llm: EngineLLM) -> None:
    typed: LLM = llm
    assert isinstance(typed, LLMTokenCounter)


async def test_generate_returns_text_and_usage(llm: EngineLLM) -> None:
    gen = await llm.generate(QUESTION, GenerationParams(max_new_tokens=8))
    prompt = sim(llm).apply_chat_template([m.model_dump() for m in QUESTION])
    assert gen.text and len(simple_tokenize(gen.text)) == 8
    assert gen.finish_reason == "length"
    assert gen.prompt_tokens == len(simple_tokenize(prompt))
    assert gen.completion_tokens == 8
    assert gen.model_id == "ragstream/simulated-filler"
    assert gen.attempts == 1
    again = await llm.generate(QUESTION, GenerationParams(max_new_tokens=8))
    assert again.text == gen.text  # greedy filler: deterministic


async def test_ttft_is_measured_and_not_above_total() -> None:
    adapter = EngineLLM.from_settings(settings("--ttft-ms 40 --per-token-ms 10"))
    gen = await adapter.generate(QUESTION, GenerationParams(max_new_tokens=6))
    assert 35 <= gen.ttft_ms <= gen.total_ms
    assert gen.total_ms >= 40 + 5 * 10 - 5
    await adapter.close()


async def test_max_new_tokens_is_respected_and_checked_against_the_total(llm: EngineLLM) -> None:
    for n in (1, 5, 13):
        gen = await llm.generate(QUESTION, GenerationParams(max_new_tokens=n))
        assert gen.completion_tokens == n and len(simple_tokenize(gen.text)) == n
    room = 96 - llm.count([sim(llm).apply_chat_template([m.model_dump() for m in QUESTION])])[0]
    assert (await llm.generate(QUESTION, GenerationParams(max_new_tokens=room))).completion_tokens == room
    with pytest.raises(LLMValidationError, match="max_new_tokens"):
        await llm.generate(QUESTION, GenerationParams(max_new_tokens=room + 1))


async def test_stop_sequence_is_not_in_the_text_even_across_tokens(llm: EngineLLM) -> None:
    full = (await llm.generate(QUESTION, GenerationParams(max_new_tokens=8))).text
    words = full.split(" ")[1:]  # the filler is " word" per token
    stop = words[1][-2:] + " " + words[2][:3]  # ends of token 2, start of token 3
    expected = " " + words[0] + " " + words[1][:-2]
    assert full.index(stop) == len(expected)  # premise: the stop occurs first where it was cut out
    gen = await llm.generate(QUESTION, GenerationParams(max_new_tokens=8, stop=["never there", stop, words[4]]))
    assert gen.text == expected
    assert gen.finish_reason == "stop"  # OpenAI's name, whichever LLM answers (the engine says stop_sequence)
    assert gen.completion_tokens == 3  # generation ended with the token that completed the stop
    # A stop that completes at a token's end, too.
    gen = await llm.generate(QUESTION, GenerationParams(max_new_tokens=8, stop=[" " + words[3]]))
    assert gen.text == " " + " ".join(words[:3])
    assert gen.completion_tokens == 4


async def test_the_text_is_passed_on_as_it_is_generated_without_the_stop_text(llm: EngineLLM) -> None:
    """Issue 13: ``on_text`` gets the pieces as the engine generates them; joined they are the answer."""
    full = (await llm.generate(QUESTION, GenerationParams(max_new_tokens=8))).text
    words = full.split(" ")[1:]
    stop = words[2][-2:] + " " + words[3][:2]
    deltas: list[tuple[str, int]] = []

    async def on_text(delta: str, attempt: int) -> None:
        deltas.append((delta, attempt))

    gen = await llm.generate(QUESTION, GenerationParams(max_new_tokens=8, stop=[stop]), on_text)
    assert "".join(d for d, _ in deltas) == gen.text == full[: full.index(stop)]
    assert len(deltas) >= 3 and all(stop not in d for d, _ in deltas) and {n for _, n in deltas} == {1}


async def test_too_long_prompt_is_a_validation_error_without_retry(llm: EngineLLM) -> None:
    long = [ChatMessage(role="user", content="word " * 60)]
    retried: list[str] = []
    llm._on_retry = retried.append
    with pytest.raises(LLMValidationError, match="must have less than 48 tokens"):
        await llm.generate(long, GenerationParams(max_new_tokens=4))
    assert sim(llm).stats.requests_seen == 1  # one attempt only
    assert retried == []
    with pytest.raises(LLMValidationError, match="stop"):  # more stop sequences than --max-stop-sequences
        await llm.generate(QUESTION, GenerationParams(max_new_tokens=4, stop=["a", "b", "c", "d", "e"]))


async def test_loading_twice_then_an_answer_after_three_attempts() -> None:
    retried: list[str] = []
    adapter = EngineLLM.from_settings(settings(faults({"kind": "loading", "next": 2})), on_retry=retried.append)
    gen = await adapter.generate(QUESTION, GenerationParams(max_new_tokens=4))
    assert gen.attempts == 3 and gen.completion_tokens == 4
    assert retried == ["LLMLoadingError", "LLMLoadingError"]
    stats = sim(adapter).stats
    assert stats.faults == {"loading": 2} and stats.requests_seen == 3 and stats.completed == 1
    await adapter.close()


@pytest.mark.parametrize(("kind", "error"), [("overloaded", LLMOverloadedError), ("loading", LLMLoadingError)])
async def test_retries_are_bounded_by_max_attempts(kind: str, error: type[Exception]) -> None:
    adapter = EngineLLM.from_settings(settings(faults({"kind": kind}), max_attempts=3))
    with pytest.raises(error):
        await adapter.generate(QUESTION, GenerationParams(max_new_tokens=4))
    assert sim(adapter).stats.requests_seen == 3
    await adapter.close()


@pytest.mark.parametrize(
    ("rule", "error"),
    [
        ({"kind": "validation"}, LLMValidationError),
        ({"kind": "stream_error", "after_tokens": 2}, LLMStreamError),
    ],
)
async def test_permanent_engine_errors_are_not_retried(rule: dict[str, Any], error: type[Exception]) -> None:
    adapter = EngineLLM.from_settings(settings())
    sim(adapter).set_faults(parse_fault_rules([rule]))
    with pytest.raises(error):
        await adapter.generate(QUESTION, GenerationParams(max_new_tokens=4))
    assert sim(adapter).stats.requests_seen == 1
    await adapter.close()


async def test_a_hanging_attempt_times_out_and_is_retried() -> None:
    adapter = EngineLLM.from_settings(
        settings(faults({"kind": "hang", "hang_s": 5, "next": 1}), timeout_s=0.2, max_attempts=2)
    )
    gen = await adapter.generate(QUESTION, GenerationParams(max_new_tokens=3))
    assert gen.attempts == 2 and gen.completion_tokens == 3
    adapter2 = EngineLLM.from_settings(settings(faults({"kind": "hang", "hang_s": 5}), timeout_s=0.1, max_attempts=1))
    with pytest.raises(LLMTimeoutError):
        await adapter2.generate(QUESTION, GenerationParams(max_new_tokens=3))
    await adapter.close()
    await adapter2.close()


async def test_max_concurrent_requests_is_enforced_like_the_server() -> None:
    adapter = EngineLLM.from_settings(
        settings("--max-concurrent-requests 1 --ttft-ms 50", max_attempts=1, max_in_flight=2)
    )
    results = await asyncio.gather(
        *(adapter.generate(QUESTION, GenerationParams(max_new_tokens=2)) for _ in range(2)), return_exceptions=True
    )
    assert sorted(type(r).__name__ for r in results) == ["Generation", "LLMOverloadedError"]
    await adapter.close()


async def test_in_flight_calls_are_bounded_by_the_limiter() -> None:
    adapter = EngineLLM.from_settings(settings("--ttft-ms 30 --capacity 16", max_in_flight=2))
    await asyncio.gather(*(adapter.generate(QUESTION, GenerationParams(max_new_tokens=2)) for _ in range(6)))
    assert sim(adapter).stats.max_concurrent == 2
    await adapter.close()


async def test_count_matches_the_engine_tokenizer(llm: EngineLLM) -> None:
    texts = ["Hello, world!", "", "  two  spaces\n", "def f(x): return x ** 2"]
    with pytest.raises(ServiceUnavailableError):
        llm.count(texts)  # not loaded yet
    await llm.info()
    assert llm.count(texts) == [len(simple_tokenize(t)) for t in texts] == [4, 0, 3, 11]


async def test_busy_counters_grow_with_generation() -> None:
    registry = CollectorRegistry()
    adapter = EngineLLM.from_settings(settings("--ttft-ms 60 --per-token-ms 10"), registry)

    def sample(name: str) -> float:
        value = registry.get_sample_value(name)
        assert value is not None
        return value

    assert sample("engine_busy_seconds_total") == 0 and sample("engine_generations_total") == 0
    await adapter.generate(QUESTION, GenerationParams(max_new_tokens=3))
    one = sample("engine_busy_seconds_total")
    assert 0.07 <= one < 0.5
    assert sample("engine_generations_total") == 1
    # Two overlapping generations: the engine is busy once, not twice.
    await asyncio.gather(*(adapter.generate(QUESTION, GenerationParams(max_new_tokens=3)) for _ in range(2)))
    two = sample("engine_busy_seconds_total") - one
    assert 0.07 <= two < 1.5 * one
    assert sample("engine_generations_total") == 3
    assert adapter.busy.in_flight == 0
    await adapter.close()


async def test_an_engine_passed_in_directly_and_close() -> None:
    engine = SimulatedEngine(SimulatedConfig(ttft_ms=0, per_token_ms=0))
    adapter = EngineLLM(engine, ServerLimits(max_input_tokens=64, max_total_tokens=128), LLMSettings(**FAST))
    assert (await adapter.generate(QUESTION, GenerationParams(max_new_tokens=2))).completion_tokens == 2
    await adapter.close()
    await adapter.close()  # idempotent
    with pytest.raises(ServiceUnavailableError):
        await adapter.generate(QUESTION, GenerationParams(max_new_tokens=2))


async def test_empty_messages_are_a_validation_error(llm: EngineLLM) -> None:
    with pytest.raises(LLMValidationError, match="messages"):
        await llm.generate([], GenerationParams(max_new_tokens=2))
