"""A producer that produces again, on a new client, what one client could not deliver in time.

Why: after a broker restart, librdkafka (2.x, up to at least 2.16) can leave a partition without a leader for good
when a produce response named leader -1 during the broker's shutdown (the KIP-951 fast path skips the update:
confluentinc/librdkafka#5430, fix proposed in #5431). An idempotent producer then waits for that partition's
in-flight messages to drain before producing anywhere, so every message times out at ``message.timeout.ms``. A new
client fetches fresh metadata and delivers at once. The chaos run met this in 2 of 7 quick runs: 140-150 of 200
client requests failed with ``Local: Message timed out`` 60 s after the broker came back.

:class:`ResendingProducer` gives each message its client's ``message.timeout.ms`` per attempt; a message that times
out is produced again on a new client (one new client per stall, shared by every message of the stalled one), at most
``attempts`` times in all, before its failure is reported. A message produced again may be a duplicate (the stalled
client may still have written it): use this only where consumers handle duplicates by key, as the pipeline does for
requests (request id).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import KafkaError, Message

from workers.kafka.producer import Headers, KafkaProducer

log = logging.getLogger(__name__)

#: Delivery errors after which a message is produced again on a new client.
RESEND_CODES = frozenset({KafkaError._MSG_TIMED_OUT})


class ClientGenerations:
    """The current producer client and the stalled ones it replaced, for code that swaps a client that stopped
    delivering (librdkafka#5430) for a new one: :class:`ResendingProducer` and
    :class:`workers.kafka.streams.DeliveringProducer`.

    Each client has a generation (0 for the first); :meth:`replace` names the generation that was seen stalling,
    so however many messages saw one client stall, it is replaced once. Replaced clients stay in :attr:`retired`
    until their queues are empty (:meth:`poll`), so their late reports are still served.

    Args:
        factory: builds a new client.

    Attributes:
        current: the client new messages go to.
        retired: replaced clients with messages possibly still queued.
        replaced: how many clients were replaced (the current client's generation).
    """

    def __init__(self, factory: Callable[[], KafkaProducer]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self.current = factory()
        self.retired: list[KafkaProducer] = []
        self.replaced = 0

    def get(self) -> tuple[KafkaProducer, int]:
        """The current client and its generation."""
        with self._lock:
            return self.current, self.replaced

    def replace(self, generation: int) -> bool:
        """Put a new client in place of the one of ``generation``; False when that was done already."""
        with self._lock:
            if self.replaced != generation:
                return False
            self.retired.append(self.current)
            self.current = self._factory()
            self.replaced += 1
            return True

    def all(self) -> list[KafkaProducer]:
        """The retired clients and the current one."""
        with self._lock:
            return [*self.retired, self.current]

    def poll(self, timeout_s: float = 0.0) -> None:
        """Serve the delivery reports of every client (the current one waiting up to ``timeout_s`` seconds for one),
        then forget the retired clients with nothing left queued."""
        with self._lock:
            current, retired = self.current, list(self.retired)
        for p in retired:
            p.poll(0)
        current.poll(timeout_s)
        if retired:
            with self._lock:
                self.retired = [p for p in self.retired if p.flush(0) > 0]


class ResendingProducer:
    """Produce with a bounded number of delivery attempts, each on a client that has not stalled.

    Args:
        factory: builds a new :class:`KafkaProducer` (its ``message.timeout.ms`` is one attempt's bound).
        attempts: delivery attempts per message (≥ 1).

    Attributes:
        replaced: how many times a stalled client was replaced (also the current client's generation).
        resent: messages produced again.
    """

    def __init__(self, factory: Callable[[], KafkaProducer], attempts: int = 4) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        self.attempts = attempts
        self.clients = ClientGenerations(factory)
        self.resent = 0

    @property
    def replaced(self) -> int:
        """How many stalled clients were replaced."""
        return self.clients.replaced

    @property
    def retired(self) -> list[KafkaProducer]:
        """Replaced clients with messages possibly still queued."""
        return self.clients.retired

    def send(
        self,
        topic: str,
        value: bytes,
        key: str | bytes | None,
        headers: Headers | None,
        on_failed: Callable[[str], None],
        attempt: int = 1,
    ) -> None:
        """Produce one message; ``on_failed(reason)`` is called once if it is not delivered after every attempt.

        Raises:
            BufferError: the current client's queue stayed full (first attempt only; later attempts report it
                through ``on_failed``).
        """
        producer, generation = self.clients.get()

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                return
            if err.code() in RESEND_CODES and attempt < self.attempts:
                self._replace(generation, err)
                self.resent += 1
                try:
                    self.send(topic, value, key, headers, on_failed, attempt + 1)
                except BufferError:
                    on_failed(f"{err} (attempt {attempt}); then the local queue stayed full")
                return
            on_failed(str(err) if attempt == 1 else f"{err} (after {attempt} attempts)")

        producer.produce(topic, value, key, headers, on_delivery)

    def _replace(self, generation: int, err: KafkaError) -> None:
        """Replace the client of ``generation`` unless that was done already."""
        if not self.clients.replace(generation):
            return
        log.warning(
            "a message was not delivered in time (%s): producing the stalled client's messages again on a new "
            "client (librdkafka#5430: a partition without a leader after a broker restart)",
            err,
        )

    def poll(self) -> None:
        """Serve the delivery reports of every client (the stalled ones' time-outs trigger the new attempts); a
        stalled client with nothing left is dropped."""
        self.clients.poll()

    def flush(self, timeout_s: float = 10.0) -> int:
        """Wait up to ``timeout_s`` seconds until nothing is queued on any client; returns how many are left."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = sum(p.flush(0.05) for p in self.clients.all())
            if left == 0 or time.monotonic() >= deadline:
                return left


__all__ = ["RESEND_CODES", "ClientGenerations", "ResendingProducer"]
