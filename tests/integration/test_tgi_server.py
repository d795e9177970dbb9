"""The devstack LLM server through huggingface_hub's AsyncInferenceClient, as the generator uses it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.errors import HfHubHTTPError, ValidationError


@pytest.fixture
async def llm(stack: object) -> AsyncIterator[AsyncInferenceClient]:
    client = AsyncInferenceClient(base_url=stack.llm_url)  # type: ignore[attr-defined]
    yield client
    await client.close()


async def test_info_and_health(stack: object) -> None:
    url = stack.llm_url  # type: ignore[attr-defined]
    async with httpx.AsyncClient(base_url=url) as c:
        assert (await c.get("/health")).status_code == 200
        info = (await c.get("/info")).json()
    for key in ("model_id", "max_input_tokens", "max_total_tokens", "max_concurrent_requests", "version"):
        assert key in info
    assert info["max_input_tokens"] < info["max_total_tokens"]


async def test_text_generation(llm: AsyncInferenceClient) -> None:
    text = await llm.text_generation("What is a generator?", max_new_tokens=8)
    assert isinstance(text, str) and text
    out = await llm.text_generation("What is a generator?", max_new_tokens=8, details=True)
    assert out.generated_text == text  # greedy: deterministic
    assert out.details is not None
    assert out.details.generated_tokens == 8
    assert out.details.finish_reason == "length"


async def test_text_generation_stream(llm: AsyncInferenceClient) -> None:
    pieces = [t async for t in await llm.text_generation("Hello", max_new_tokens=6, stream=True)]
    assert len(pieces) == 6
    events = [e async for e in await llm.text_generation("Hello", max_new_tokens=6, stream=True, details=True)]
    assert events[-1].details is not None
    assert events[-1].details.generated_tokens == 6
    assert events[-1].details.input_length > 0
    assert events[-1].generated_text == "".join(pieces)


async def test_chat_completion(llm: AsyncInferenceClient) -> None:
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is a tuple?"}]
    out = await llm.chat_completion(messages, max_tokens=7)
    choice = out.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.role == "assistant" and choice.message.content
    assert out.usage.completion_tokens == 7
    assert out.usage.total_tokens == out.usage.prompt_tokens + 7


async def test_chat_completion_stream(llm: AsyncInferenceClient) -> None:
    messages = [{"role": "user", "content": "What is a tuple?"}]
    chunks = [
        c
        async for c in await llm.chat_completion(
            messages, max_tokens=5, stream=True, stream_options={"include_usage": True}
        )
    ]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert usage and usage[-1].completion_tokens == 5
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    full = await llm.chat_completion(messages, max_tokens=5)
    assert text == full.choices[0].message.content


async def test_too_long_input_is_a_validation_error(llm: AsyncInferenceClient, stack: object) -> None:
    async with httpx.AsyncClient(base_url=stack.llm_url) as c:  # type: ignore[attr-defined]
        limit = (await c.get("/info")).json()["max_input_tokens"]
    with pytest.raises(ValidationError):
        await llm.text_generation("word " * (limit + 10), max_new_tokens=4)
    # chat_completion does not translate TGI errors into ValidationError; the status and body are TGI's.
    with pytest.raises(HfHubHTTPError) as err:
        await llm.chat_completion([{"role": "user", "content": "word " * (limit + 10)}], max_tokens=4)
    assert err.value.response is not None and err.value.response.status_code == 422
    assert err.value.response.json()["error_type"] == "validation"
