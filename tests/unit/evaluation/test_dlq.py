"""Dead-letter tools without Kafka: positions (typos are errors), the payload as text."""

from __future__ import annotations

import base64
import json

import pytest

from workers.contracts.errors import ConfigError
from workers.contracts.messages import DeadLetter
from workers.evaluation.dlq import check_positions, parse_positions, payload_text


def _letter(value: bytes) -> DeadLetter:
    return DeadLetter(
        source_topic="rag.requests",
        partition=0,
        offset=3,
        value_b64=base64.b64encode(value).decode(),
        value_bytes=len(value),
        error_class="bad_message",
        error_message="not JSON",
        stage="retriever",
    )


def test_positions_parse_and_typos_are_errors() -> None:
    assert parse_positions("0:12, 1:3") == {(0, 12), (1, 3)}
    for bad in ("0:12;1:3", "0-12", "a:1", "0:1:2", ",", ""):
        with pytest.raises(ConfigError):
            parse_positions(bad)
    check_positions(frozenset({(0, 1)}), {(0, 1), (2, 5)}, "rag.dead-letter")
    with pytest.raises(ConfigError, match=r"no dead letter at 0:121 in rag.dead-letter \(it holds 0:1-1, 2:5-5"):
        check_positions(frozenset({(0, 121), (0, 1)}), {(0, 1), (2, 5)}, "rag.dead-letter")
    with pytest.raises(ConfigError, match="it holds nothing"):
        check_positions(frozenset({(0, 0)}), set(), "t")


def test_payload_text_shows_json_indented_text_as_is_and_bytes_as_a_literal() -> None:
    assert json.loads(payload_text(_letter(b'{"query": "x", "n": 1}'))) == {"query": "x", "n": 1}
    assert payload_text(_letter(b'{"query": "x"}')).startswith('{\n  "query"')
    assert payload_text(_letter(b"not json {")) == "not json {"
    assert payload_text(_letter(b"\xff\xfe raw")) == "b'\\xff\\xfe raw'"
