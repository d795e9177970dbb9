"""The Python client as a user calls it, against the real broker: errors are ragstream errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from workers.client import RagClient
from workers.contracts.errors import PermanentError, RagError, RequestValidationError
from workers.settings import Settings, load_settings


@pytest.fixture
def settings(stack: Any, unique: str, make_topics: Callable[..., list[str]]) -> Settings:
    s = load_settings(kafka={"bootstrap_servers": stack.bootstrap_servers}, topics={"prefix": f"cl{unique}."})
    make_topics([s.topics.name("requests"), s.topics.name("responses")], partitions=1)
    return s


def test_ask_with_a_2_mb_query_raises_a_request_validation_error(settings: Settings) -> None:
    """Issue 14 #7: not a raw pydantic ValidationError; the field and the limit are named; nothing is sent."""
    with RagClient(settings) as client:
        with pytest.raises(RequestValidationError) as err:
            client.ask("x" * 2_000_000, timeout_s=5)
        assert isinstance(err.value, PermanentError) and isinstance(err.value, RagError)
        assert err.value.field == "query" and err.value.limit == 20_000
        assert "query" in str(err.value) and "20000" in str(err.value) and "2000000" in str(err.value)
        with pytest.raises(RequestValidationError) as err:
            client.ask("fine", timeout_s=5, max_new_tokens=100_000)
        assert err.value.field == "generation.max_new_tokens" and err.value.limit == 32_768
        assert client.flush(5) == 0 and not client._pending  # nothing was produced or left waiting
