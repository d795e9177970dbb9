"""Dead letters of inputs sent back from the dead-letter topic count their attempts on."""

from __future__ import annotations

from datetime import UTC, datetime

from workers.contracts.errors import MessageError
from workers.stream.records import Incoming, dead_letter_of


def _incoming(headers: dict[str, str]) -> Incoming:
    return Incoming("rag.requests", 1, 7, b"k", b"not json", headers, 0)


def test_attempts_go_up_when_a_replayed_dead_letter_fails_again() -> None:
    first = dead_letter_of(_incoming({}), stage="retriever", error=MessageError("bad"))
    assert first.attempts == 1
    t0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    again = dead_letter_of(
        _incoming({"dlq_attempts": "3", "dlq_first_failure_at": t0.isoformat()}),
        stage="retriever",
        error=MessageError("bad"),
    )
    assert again.attempts == 4 and again.first_failure_at == t0 and again.last_failure_at > t0
    odd = dead_letter_of(
        _incoming({"dlq_attempts": "x", "dlq_first_failure_at": "soon"}), stage="r", error=ValueError()
    )
    assert odd.attempts == 1 and odd.first_failure_at == odd.last_failure_at
