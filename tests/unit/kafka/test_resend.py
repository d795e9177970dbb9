"""ResendingProducer (workers/kafka/resend.py): a message that times out is produced again on a new client.

A fake stands in for the confluent-kafka client (pure logic: which client gets which message, when a failure is
reported); the real stall it works around (librdkafka#5430 after a broker restart) is met by the chaos run.
"""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError

from workers.kafka.resend import ResendingProducer


class FakeProducer:
    """Records produced messages; the test decides each delivery report."""

    def __init__(self, name: int) -> None:
        self.name = name
        self.queued: list[tuple[bytes, Any]] = []

    def produce(self, topic: str, value: bytes, key: Any, headers: Any, on_delivery: Any) -> None:
        self.queued.append((value, on_delivery))

    def report(self, err: KafkaError | None) -> None:
        """Deliver (err None) or fail every queued message."""
        queued, self.queued = self.queued, []
        for _value, cb in queued:
            cb(err, None)

    def poll(self, _timeout: float = 0) -> int:
        return 0

    def flush(self, _timeout: float = 0) -> int:
        return len(self.queued)


def make(attempts: int = 3) -> tuple[ResendingProducer, list[FakeProducer]]:
    made: list[FakeProducer] = []

    def factory() -> Any:
        made.append(FakeProducer(len(made)))
        return made[-1]

    return ResendingProducer(factory, attempts=attempts), made


TIMED_OUT = KafkaError(KafkaError._MSG_TIMED_OUT)


def test_a_delivered_message_is_sent_once_on_one_client() -> None:
    rp, made = make()
    failures: list[str] = []
    rp.send("t", b"a", "k", None, failures.append)
    made[0].report(None)
    assert len(made) == 1 and failures == [] and rp.resent == 0


def test_timed_out_messages_go_again_on_one_new_client() -> None:
    rp, made = make()
    failures: list[str] = []
    for v in (b"a", b"b", b"c"):
        rp.send("t", v, "k", None, failures.append)
    made[0].report(TIMED_OUT)  # the stalled client times out all three
    assert len(made) == 2 and rp.replaced == 1 and rp.resent == 3  # one new client for the whole stall
    assert [v for v, _ in made[1].queued] == [b"a", b"b", b"c"]
    made[1].report(None)
    assert failures == []
    rp.poll()
    assert rp.retired == []  # the stalled client, with nothing left, is dropped


def test_after_the_last_attempt_the_failure_is_reported_once() -> None:
    rp, made = make(attempts=2)
    failures: list[str] = []
    rp.send("t", b"a", "k", None, failures.append)
    made[0].report(TIMED_OUT)
    made[1].report(TIMED_OUT)
    assert len(made) == 2 and len(failures) == 1 and "after 2 attempts" in failures[0]


def test_other_errors_are_reported_at_once() -> None:
    rp, made = make()
    failures: list[str] = []
    rp.send("t", b"a", "k", None, failures.append)
    made[0].report(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    assert len(made) == 1 and len(failures) == 1 and rp.resent == 0


def test_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ResendingProducer(lambda: FakeProducer(0), attempts=0)  # type: ignore[arg-type,return-value]
