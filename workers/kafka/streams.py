"""The Kafka side of streamed answers: token events to the asking gateway replica, cancels on the control topic.

* :class:`KafkaTokenPublisher` produces a request's :class:`TokenEvent` records to the tokens topic, keyed by request
  id, to the request's ``reply_partition`` (the asking gateway replica's partition; by key when it names none). Its
  own idempotent producer (``linger.ms`` 0: the generator batches the events itself) has a thread serving delivery
  reports, so :meth:`KafkaTokenPublisher.send_and_wait` can await a final event's delivery.
* :class:`ControlReader` reads the control topic without a consumer group, every partition from its end (only
  cancels that arrive while it runs matter), in a thread, and hands each :class:`CancelEvent` to a callback.
* :func:`cancel_output` is what a gateway produces when a client goes away; :class:`DeliveringProducer` is the
  producer with awaitable delivery reports both use (the gateway for its requests and cancels).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from confluent_kafka import KafkaError, Message

from workers.contracts.errors import ConfigError, MessageError, RetryableError
from workers.contracts.messages import CancelEvent, Request, TokenEvent
from workers.contracts.serde import decode, encode
from workers.kafka.producer import KafkaProducer
from workers.kafka.reader import assign_at, consume_available, reader
from workers.kafka.resend import ClientGenerations
from workers.settings import KafkaSettings
from workers.stream.records import Output

log = logging.getLogger(__name__)


class DeliveringProducer:
    """An idempotent producer with a thread that serves its delivery reports, for asyncio code that awaits them.

    A client that stops delivering is replaced: when :meth:`deliver` gets no report within ``delivery_timeout_s``,
    or a message times out in librdkafka (``_MSG_TIMED_OUT``), the next messages go to a new client (one new client
    per stalled one, however many messages saw it stall). After a broker restart librdkafka can leave a partition
    without a leader (confluentinc/librdkafka#5430, see :mod:`workers.kafka.resend`); without this a gateway
    replica answers 503 for as long as its client stays stalled. The stalled client is kept, its reports
    served, until its queue is empty (its messages are delivered late or time out); a message it delivers late may
    duplicate one the caller sent again, which consumers handle by key (request id).

    Args:
        kafka: connection settings.
        delivery_timeout_s: longest :meth:`deliver` waits for a delivery report (s).
        overrides: librdkafka properties (e.g. ``{"linger.ms": 0}``).
        factory: builds each client (default: a :class:`KafkaProducer` of ``kafka`` and ``overrides``).

    Attributes:
        clients: the current client and the replaced ones (:class:`workers.kafka.resend.ClientGenerations`);
            ``producer`` and ``replaced`` read the current client and how many were replaced.
        failed: messages not delivered.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        delivery_timeout_s: float = 10.0,
        overrides: dict[str, object] | None = None,
        factory: Callable[[], KafkaProducer] | None = None,
    ) -> None:
        self.delivery_timeout_s = delivery_timeout_s
        self.clients = ClientGenerations(
            factory or (lambda: KafkaProducer(kafka, poll_after_produce=False, overrides=overrides))
        )
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="deliveries", daemon=True)
        self._thread.start()

    @property
    def producer(self) -> KafkaProducer:
        """The current client."""
        return self.clients.current

    @property
    def replaced(self) -> int:
        """How many stalled clients were replaced."""
        return self.clients.replaced

    def _serve(self) -> None:
        while not self._stop.is_set():
            self.clients.poll(0.05)

    def _replace(self, generation: int, why: str) -> None:
        """Put a new client in place of the one of ``generation``, unless that was done already."""
        if self.clients.replace(generation):
            log.warning("the producer stopped delivering (%s): the next messages go to a new client", why)

    def _reporter(self, generation: int) -> Callable[[KafkaError | None, Message], None]:
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                return
            self.failed += 1
            log.warning("not delivered topic=%s: %s", msg.topic(), err)
            if err.code() == KafkaError._MSG_TIMED_OUT:
                self._replace(generation, str(err))

        return on_delivery

    def send(self, out: Output) -> None:
        """Queue ``out`` without waiting for its delivery (a failure is logged and counted).

        Raises:
            BufferError: the local queue stayed full.
        """
        producer, generation = self.clients.get()
        producer.produce(
            out.topic, out.value, out.key, out.headers, self._reporter(generation), partition=out.partition
        )

    async def deliver(self, out: Output) -> None:
        """Queue ``out`` and wait for its delivery report (messages of one partition are delivered in order).

        Raises:
            RetryableError: not delivered, or no report within ``delivery_timeout_s`` (the client is then
                replaced for the next messages).
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[KafkaError | None] = loop.create_future()
        producer, generation = self.clients.get()
        report = self._reporter(generation)

        def settle(err: KafkaError | None) -> None:
            if not done.done():
                done.set_result(err)

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            report(err, msg)
            loop.call_soon_threadsafe(settle, err)

        await producer.produce_async(out.topic, out.value, out.key, out.headers, on_delivery, partition=out.partition)
        try:
            err = await asyncio.wait_for(done, self.delivery_timeout_s)
        except TimeoutError:
            self._replace(generation, f"no delivery report within {self.delivery_timeout_s} s")
            raise RetryableError(
                f"no delivery report from the broker within {self.delivery_timeout_s} s (topic {out.topic})"
            ) from None
        if err is not None:
            raise RetryableError(f"not delivered to {out.topic}: {err}")

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush the current client within ``timeout_s`` seconds and stop the delivery thread (a replaced client's
        messages still queued are dropped)."""
        self.producer.flush(timeout_s)
        self._stop.set()
        self._thread.join(1.0)


class KafkaTokenPublisher:
    """Produces token events (see the module docstring); implements the generator's ``TokenPublisher``.

    Args:
        kafka: connection settings.
        topic: the tokens topic (prefix applied).
    """

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        self.topic = topic
        self.out = DeliveringProducer(kafka, overrides={"linger.ms": 0})

    def _output(self, event: TokenEvent, request: Request) -> Output:
        rid = str(event.request_id)
        return Output(self.topic, encode(event), rid, {"request_id": rid}, request.reply_partition)

    def send(self, event: TokenEvent, request: Request) -> None:
        """Queue ``event`` (no wait for its delivery).

        Raises:
            BufferError: the local queue stayed full.
        """
        self.out.send(self._output(event, request))

    async def send_and_wait(self, event: TokenEvent, request: Request) -> None:
        """Queue ``event`` and wait for its delivery (events of a request are delivered in order).

        Raises:
            RetryableError: not delivered in time.
        """
        await self.out.deliver(self._output(event, request))

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush and stop."""
        self.out.close(timeout_s)


class ControlReader:
    """Reads cancel events from the control topic's end, group-less, in a thread (see the module docstring).

    Args:
        kafka: connection settings.
        topic: the control topic (prefix applied).
        on_cancel: called (in the reader's thread) with each cancel event.
    """

    def __init__(self, kafka: KafkaSettings, topic: str, on_cancel: Callable[[CancelEvent], None]) -> None:
        self.kafka = kafka
        self.topic = topic
        self.on_cancel = on_cancel
        self.seen = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="control-reader", daemon=True)

    def start(self, timeout_s: float = 10.0) -> bool:
        """Start reading; True once the partitions are assigned at their ends (False: the topic is missing, logged,
        and nothing is read)."""
        self._thread.start()
        self._ready.wait(timeout_s)
        return self._thread.is_alive() and self._ready.is_set()

    def _run(self) -> None:
        consumer = reader(self.kafka, "control", **{"fetch.wait.max.ms": 50})
        try:
            try:
                assign_at(consumer, self.topic, "high")
            except ConfigError as exc:
                log.warning("cancels are not read: %s (ragstream topics apply creates it)", exc)
                return
            self._ready.set()
            while not self._stop.is_set():
                for msg in consume_available(consumer, 100, 0.2):
                    if msg.error() is not None:
                        continue
                    try:
                        event = decode(msg.value(), CancelEvent)
                    except MessageError as exc:
                        log.warning("control event ignored offset=%s: %s", msg.offset(), exc)
                        continue
                    self.seen += 1
                    self.on_cancel(event)
        finally:
            consumer.close()

    def stop(self) -> None:
        """Stop reading (joins the thread for up to 2 s)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)


def cancel_output(topic: str, event: CancelEvent) -> Output:
    """The control-topic message that cancels ``event.request_id`` (keyed by request id)."""
    rid = str(event.request_id)
    return Output(topic, encode(event), rid, {"request_id": rid})
