"""A partition paused for backpressure, revoked, and assigned back is fetched again (real broker).

librdkafka keeps a partition's application pause across revoke and re-assignment within one client. The
chaos run found the consequence: a worker paused at its in-flight bound lost its partitions in a broker
outage, got them back, and never fetched them again (their requests were never answered). The loop now
resumes what leaves the assignment and everything newly assigned (unless it wants them paused).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from confluent_kafka import Consumer, Producer

from tests.kafka_helpers import committed_and_end, drain, produce
from workers.kafka.config import consumer_config
from workers.kafka.loop import LoopConfig, WorkerLoop
from workers.kafka.producer import KafkaProducer
from workers.settings import KafkaSettings
from workers.stream.records import Incoming, Output

PARTITIONS = 4


def _produce_to(bootstrap: str, topic: str, values: list[tuple[str, bytes]], partitions: list[int]) -> None:
    p = Producer({"bootstrap.servers": bootstrap})
    for i, (key, value) in enumerate(values):
        p.produce(topic, value, key=key, partition=partitions[i % len(partitions)])
    assert p.flush(30) == 0


def test_paused_partitions_revoked_and_assigned_back_are_consumed(stack: Any, unique: str, make_topics: Any) -> None:
    src, out, dlq = f"rb{unique}.in", f"rb{unique}.out", f"rb{unique}.dlq"
    make_topics([src, dlq], partitions=PARTITIONS)
    make_topics([out], partitions=1)
    group = f"rb-{unique}"
    kafka = KafkaSettings(bootstrap_servers=stack.bootstrap_servers, session_timeout_ms=6000)
    first = [(f"a{i}", f"first-{i}".encode()) for i in range(4 * PARTITIONS)]
    second = [(f"b{i}", f"second-{i}".encode()) for i in range(4 * PARTITIONS)]
    produce(stack.bootstrap_servers, src, first)

    async def run() -> list[bytes]:
        gate = asyncio.Event()

        async def handler(batch: list[Incoming]) -> list[list[Output]]:
            await gate.wait()
            return [[Output(topic=out, value=inc.value or b"", key=inc.key)] for inc in batch]

        loop = WorkerLoop(
            LoopConfig(
                role="test",
                topics=[src],
                dead_letter_topic=dlq,
                max_in_flight=2,
                batch_max=1,
                revoke_timeout_s=1.0,
                shutdown_timeout_s=10,
            ),
            Consumer(consumer_config(kafka, group)),
            KafkaProducer(kafka, poll_after_produce=False),
            handler,
        )
        task = asyncio.create_task(loop.run())
        # The loop takes every partition and reaches its in-flight bound: it pauses all of them.
        deadline = time.monotonic() + 30
        while not (loop.tracker.in_flight() >= 2 and loop._consumer_paused):  # noqa: SLF001 - test inspects state
            assert time.monotonic() < deadline, "the loop never reached its in-flight bound"
            await asyncio.sleep(0.1)

        # A second member joins: half of the (paused) partitions are revoked from the loop.
        other = Consumer({**consumer_config(kafka, group), "enable.auto.commit": False})
        got_some: list[int] = []
        other.subscribe([src], on_assign=lambda c, ps: got_some.extend(tp.partition for tp in ps))

        def join() -> None:
            end = time.monotonic() + 30
            while not other.assignment() and time.monotonic() < end:
                other.poll(0.1)
            # keep polling a little so the group is stable, without processing anything
            settle = time.monotonic() + 2
            while time.monotonic() < settle:
                other.poll(0.1)
            other.pause(other.assignment())

        await asyncio.to_thread(join)
        assert got_some, "the second member got no partition"
        # The loop's work finishes: it resumes what it holds now; then the second member leaves and the
        # revoked partitions come back to the loop.
        gate.set()
        await asyncio.sleep(2.0)
        await asyncio.to_thread(other.close)
        # New traffic only on the partitions that went away and came back: nothing else makes the loop pause
        # and resume its whole assignment (which would clear a stale pause by chance).
        await asyncio.to_thread(_produce_to, stack.bootstrap_servers, src, second, sorted(set(got_some)))
        values = await asyncio.to_thread(drain, stack.bootstrap_servers, out, len(first) + len(second), 60.0)
        loop.request_stop()
        await asyncio.wait_for(task, 30)
        return values

    values = asyncio.run(run())
    want = {v for _, v in first + second}
    missing = want - set(values)
    assert not missing, f"{len(missing)} inputs never processed (paused partitions not resumed): {sorted(missing)[:5]}"
    committed, ends = committed_and_end(stack.bootstrap_servers, group, src, PARTITIONS)
    assert committed == ends
