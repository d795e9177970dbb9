"""DeliveringProducer (the gateway's producer of requests and cancels, the generator's of token events) against the
real broker: a client that stops delivering is replaced, once, and the next messages are delivered.

The stalled client is a real librdkafka producer pointed at a port nothing listens on: it accepts messages and
never delivers them, as a client stuck by confluentinc/librdkafka#5430 does after a broker restart.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from devstack._proc import free_port
from tests.kafka_helpers import drain
from workers.contracts.errors import RetryableError
from workers.kafka.producer import KafkaProducer
from workers.kafka.streams import DeliveringProducer
from workers.settings import KafkaSettings
from workers.stream.records import Output


def _clients(bootstrap: str, stalled_overrides: dict[str, object]) -> tuple[Callable[[], KafkaProducer], list[str]]:
    """A factory whose first client never delivers (nothing listens on its port), the later ones are real."""
    made: list[str] = []

    def factory() -> KafkaProducer:
        if not made:
            made.append("stalled")
            dead = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")
            return KafkaProducer(dead, poll_after_produce=False, overrides=stalled_overrides)
        made.append("real")
        return KafkaProducer(KafkaSettings(bootstrap_servers=bootstrap), poll_after_produce=False)

    return factory, made


def test_a_stalled_client_is_replaced_once_and_the_next_messages_are_delivered(
    stack: Any, make_topics: Callable[..., list[str]], unique: str
) -> None:
    (topic,) = make_topics([f"dp-{unique}"], partitions=1)
    factory, made = _clients(stack.bootstrap_servers, {})
    producer = DeliveringProducer(KafkaSettings(bootstrap_servers=stack.bootstrap_servers), 2.0, factory=factory)

    async def deliver_all(values: list[bytes]) -> list[BaseException | None]:
        return await asyncio.gather(
            *(producer.deliver(Output(topic, v, v.decode(), None)) for v in values), return_exceptions=True
        )

    try:
        # five requests at once meet the stalled client: each gets a retryable error after 2 s, one replacement
        first = asyncio.run(deliver_all([f"stalled-{i}".encode() for i in range(5)]))
        assert all(isinstance(e, RetryableError) for e in first), first
        assert producer.replaced == 1 and made == ["stalled", "real"]
        # the next ones go to the new client and are delivered
        second = asyncio.run(deliver_all([f"after-{i}".encode() for i in range(3)]))
        assert second == [None, None, None]
        assert producer.replaced == 1
    finally:
        producer.close()
    got = sorted(drain(stack.bootstrap_servers, topic, 3, timeout_s=30))
    assert got == [b"after-0", b"after-1", b"after-2"]


def test_a_message_timed_out_in_librdkafka_replaces_the_client_of_send(
    stack: Any, make_topics: Callable[..., list[str]], unique: str
) -> None:
    """``send`` (no wait: the generator's token events) learns of the stall from librdkafka's own time-out."""
    (topic,) = make_topics([f"dp-{unique}"], partitions=1)
    factory, made = _clients(stack.bootstrap_servers, {"message.timeout.ms": 1000})
    producer = DeliveringProducer(KafkaSettings(bootstrap_servers=stack.bootstrap_servers), 10.0, factory=factory)
    try:
        producer.send(Output(topic, b"lost", "k", None))
        deadline = time.monotonic() + 20
        while producer.replaced == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert producer.replaced == 1 and producer.failed == 1 and made == ["stalled", "real"]
        producer.send(Output(topic, b"delivered", "k", None))
    finally:
        producer.close()
    assert drain(stack.bootstrap_servers, topic, 1, timeout_s=30) == [b"delivered"]


def test_a_client_that_delivers_is_never_replaced(
    stack: Any, make_topics: Callable[..., list[str]], unique: str
) -> None:
    (topic,) = make_topics([f"dp-{unique}"], partitions=3)
    producer = DeliveringProducer(KafkaSettings(bootstrap_servers=stack.bootstrap_servers), 10.0)

    async def run() -> None:
        await asyncio.gather(*(producer.deliver(Output(topic, b"v%d" % i, str(i), None)) for i in range(50)))

    try:
        asyncio.run(run())
    finally:
        producer.close()
    assert producer.replaced == 0 and producer.failed == 0
    assert len(drain(stack.bootstrap_servers, topic, 50, timeout_s=30)) == 50


def test_a_refused_message_is_a_retryable_error_without_replacing(
    stack: Any, make_topics: Callable[..., list[str]], unique: str
) -> None:
    """An error report that is not a time-out (here: a message over the broker's size limit) says nothing about the
    client: it is the caller's RetryableError, and the client stays. Random bytes, so that compression cannot bring
    the message under the limit."""
    (topic,) = make_topics([f"dp-{unique}"], partitions=1, config={"max.message.bytes": "1000"})
    producer = DeliveringProducer(KafkaSettings(bootstrap_servers=stack.bootstrap_servers), 10.0)
    try:
        with pytest.raises(RetryableError, match="not delivered"):
            asyncio.run(producer.deliver(Output(topic, os.urandom(5000), "k", None)))
        assert producer.replaced == 0
    finally:
        producer.close()
