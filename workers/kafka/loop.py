"""The confluent-kafka worker loop shared by the retriever, the generator and the monolith.

Semantics (DESIGN.md §3, §5):

* **At-least-once.** ``enable.auto.offset.store`` is off: an input offset is stored only after every
  output produced for it (answer, error answer or dead letter) has a successful delivery report, and
  offsets are stored in order per partition (the stored offset is the next one to read: the lowest offset
  still in flight, or the last finished one + 1). librdkafka's auto-commit then commits stored offsets
  every ``auto.commit.interval.ms``; revocation and shutdown commit synchronously.
* **Bounded in flight.** At most ``max_in_flight`` messages are handed to the handler and unfinished. At the
  bound the loop first just waits for capacity (librdkafka keeps pre-fetching meanwhile); only when the bound
  holds longer than ``pause_after_s`` does it pause its assigned partitions and keep polling, so a slow LLM
  call never pushes the consumer past ``max.poll.interval.ms`` (the group does not evict it). Pausing is not
  the first resort because librdkafka throws the pre-fetched messages of a paused partition away and starts
  fetching a resumed one only on its broker thread's next wake-up, measured at up to ~1 s.
* **Rebalance.** On revoke the loop waits (bounded) for in-flight messages of the revoked partitions,
  then commits what is done, so a new owner does not redo finished work.
* **Shutdown.** On SIGTERM/SIGINT it stops taking messages, waits for in-flight work up to
  ``shutdown_timeout_s``, flushes the producer, commits stored offsets and closes, also when the broker is
  already gone (each step is bounded).
* **Nothing dropped silently.** The handler (the stream runner, :mod:`workers.stream.runner`) turns every input
  it cannot serve into an error answer and/or a dead letter, so the offsets move on; an exception that escapes
  the handler, or a failed delivery report, stops the worker without storing the offsets of what was not
  finished, so those inputs are processed again after the restart.

The handler is an ``async`` callable taking a micro-batch of :class:`Incoming` messages and returning, for
each, the list of :class:`Output` messages to produce. It never sees Kafka objects beyond these records.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import CollectorRegistry

from workers.contracts.errors import PromptTooLargeError, RagError
from workers.contracts.serde import headers_to_dict
from workers.kafka.config import consumer_config
from workers.kafka.metrics import LoopMetrics, build_loop_metrics
from workers.kafka.offsets import OffsetTracker
from workers.kafka.producer import DeliveryCallback, KafkaProducer
from workers.kafka.reader import consume_available
from workers.settings import Settings
from workers.stream.records import Handler, Incoming, Output, dead_letter

log = logging.getLogger(__name__)


def incoming_of(msg: Message) -> Incoming:
    """Copy the fields of a consumed confluent-kafka ``Message`` into an :class:`Incoming` record."""
    ts_type, ts = msg.timestamp()
    return Incoming(
        topic=msg.topic() or "",
        partition=msg.partition() or 0,
        offset=msg.offset() or 0,
        key=msg.key(),
        value=msg.value(),
        headers=headers_to_dict(msg.headers()),  # type: ignore[arg-type]  # consumed headers are a list
        timestamp_ms=ts if ts_type else 0,
    )


# --------------------------------------------------------------------------- metrics


# --------------------------------------------------------------------------- the loop


@dataclass(frozen=True)
class LoopConfig:
    """Behaviour of one :class:`WorkerLoop`."""

    role: str
    topics: list[str]
    dead_letter_topic: str
    max_in_flight: int = 64
    batch_max: int = 32
    shutdown_timeout_s: float = 30.0
    revoke_timeout_s: float = 10.0
    poll_timeout_s: float = 0.05
    #: Seconds the loop may sit at ``max_in_flight`` without polling before it pauses its partitions and
    #: polls again (must stay well under ``max.poll.interval.ms``; rebalance callbacks wait as long).
    pause_after_s: float = 1.0


class FatalWorkerError(RagError):
    """The loop cannot go on without risking loss (a delivery failed, or the handler raised); restart to reprocess."""

    error_class = "fatal"


class WorkerLoop:
    """Poll → handle (async, bounded) → produce (idempotent) → store offset after delivery.

    Args:
        config: role, input topics, dead-letter topic, bounds.
        consumer: a confluent-kafka ``Consumer`` built with :func:`consumer_config`.
        producer: the idempotent producer (``poll_after_produce=False``: the loop's delivery thread serves reports).
        handler: async callable ``list[Incoming] -> list[list[Output]]`` (one output list per input).
        metrics: the loop's metrics (a private registry if omitted).
    """

    def __init__(
        self,
        config: LoopConfig,
        consumer: Consumer,
        producer: KafkaProducer,
        handler: Handler,
        metrics: LoopMetrics | None = None,
    ) -> None:
        self.config = config
        self.consumer = consumer
        self.producer = producer
        self.handler = handler
        self.metrics = metrics or build_loop_metrics(role=config.role)
        self.tracker = OffsetTracker()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._paused = False  # what the loop wants (bound reached)
        self._consumer_paused = False  # what the poll thread applied
        #: Set by the assign callback: the poll thread resumes the new assignment (see :meth:`_poll`).
        self._assigned_since_poll = False
        #: Set (from any thread) when a message finishes while the loop waits at the bound, to wake it up;
        #: ``_waiting_capacity`` says whether it waits, so finishes in normal running do not wake the loop.
        self._capacity = asyncio.Event()
        self._waiting_capacity = False
        #: Offsets to store, queued by delivery callbacks and applied by the poll thread: the consumer is only
        #: ever called from that one thread (confluent-kafka 2.16 serializes calls on a handle, so a call from
        #: another thread would wait for a running consume()).
        self._to_store: collections.deque[TopicPartition] = collections.deque()
        self._fatal: BaseException | None = None
        self._poll_pool = ThreadPoolExecutor(1, thread_name_prefix=f"{config.role}-poll")
        self._assigned: set[tuple[str, int]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._delivery_stop = threading.Event()
        self._delivery_thread = threading.Thread(
            target=self._serve_deliveries, name=f"{config.role}-delivery", daemon=True
        )
        self.started = threading.Event()

    def _serve_deliveries(self) -> None:
        # Delivery reports are served here, so offsets are stored promptly even while the poll thread is
        # blocked in a rebalance callback waiting for in-flight work to finish.
        while not self._delivery_stop.is_set():
            self.producer.poll(0.02)

    # -- callbacks (run in the poll thread)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels(self.config.role).inc()
        for tp in partitions:
            self._assigned.add((tp.topic, tp.partition))
        # librdkafka keeps a partition's application pause across revoke/lost and re-assignment in the same
        # process: a partition paused for backpressure, revoked (or lost in a broker outage) and assigned
        # back later would never be fetched again (seen in the chaos run: six partitions stalled for good).
        # The poll thread resumes every newly assigned partition unless the loop wants them paused.
        self._assigned_since_poll = True
        log.info("assigned role=%s partitions=%s", self.config.role, _fmt(partitions))
        self.started.set()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels(self.config.role).inc()
        keys = [(tp.topic, tp.partition) for tp in partitions]
        drained = self.tracker.wait_drained(keys, self.config.revoke_timeout_s)
        if not drained:
            log.warning(
                "revoke: in-flight messages not finished within %.1f s; they will be redone by the new owner",
                self.config.revoke_timeout_s,
            )
        self._apply_stores(consumer)
        try:
            consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("commit on revoke failed: %s", exc)
        self.tracker.drop(keys)
        for k in keys:
            self._assigned.discard(k)
        _resume_quietly(consumer, partitions)
        log.info("revoked role=%s partitions=%s", self.config.role, _fmt(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self.tracker.drop(keys)
        for k in keys:
            self._assigned.discard(k)
        _resume_quietly(consumer, partitions)
        log.warning("lost role=%s partitions=%s (not committed)", self.config.role, _fmt(partitions))

    # -- public

    def is_stopping(self) -> bool:
        """True once a stop was requested (the runner then stops retrying failing batches)."""
        return self._stop.is_set() or self._fatal is not None

    def request_stop(self) -> None:
        """Ask the loop to stop (thread-safe; what SIGTERM does)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        else:
            self._stop.set()

    def install_signal_handlers(self) -> None:
        """Stop gracefully on SIGTERM and SIGINT (call from the main thread inside the running loop)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

    async def run(self) -> None:
        """Consume until stopped; then drain, flush and commit within ``shutdown_timeout_s``.

        Raises:
            FatalWorkerError: a produced message failed delivery; its input was not committed.
        """
        self._loop = asyncio.get_running_loop()
        loop = self._loop
        self.consumer.subscribe(
            self.config.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        self._delivery_thread.start()
        log.info("worker started role=%s topics=%s", self.config.role, self.config.topics)
        try:
            at_bound_since: float | None = None
            while not self._stop.is_set() and self._fatal is None:
                capacity = self.config.max_in_flight - self.tracker.in_flight()
                if capacity <= 0:
                    now = time.monotonic()
                    at_bound_since = at_bound_since if at_bound_since is not None else now
                    left = self.config.pause_after_s - (now - at_bound_since)
                    if not self._paused and left > 0:
                        await self._wait_capacity(left)
                        continue
                else:
                    at_bound_since = None
                self._set_paused(capacity <= 0)
                n = max(1, min(capacity, self.config.batch_max * 4))
                msgs = await loop.run_in_executor(self._poll_pool, self._poll, n)
                if msgs:
                    self._dispatch(msgs)
                elif self._tasks:
                    await asyncio.sleep(0)
        finally:
            await self._shutdown()
        if self._fatal is not None:
            raise FatalWorkerError(f"stopped after a failure that must not be committed: {self._fatal}")

    # -- internals

    async def _wait_capacity(self, timeout_s: float) -> None:
        """Wait until a message finishes (or ``timeout_s``, at most 0.1 s so a stop request is seen)."""
        self._capacity.clear()
        self._waiting_capacity = True  # before the check: a finish after it sees the flag and wakes us
        try:
            if self.tracker.in_flight() < self.config.max_in_flight:
                return
            await asyncio.wait_for(self._capacity.wait(), timeout=min(timeout_s, 0.1))
        except TimeoutError:
            pass
        finally:
            self._waiting_capacity = False

    def _set_paused(self, pause: bool) -> None:
        if pause != self._paused:
            self._paused = pause
            self.metrics.paused.labels(self.config.role).set(1 if pause else 0)
            log.debug("paused=%s role=%s in_flight=%d", pause, self.config.role, self.tracker.in_flight())

    def _poll(self, n: int) -> list[Message]:
        """One poll-thread step: store finished offsets, apply pause/resume, consume up to ``n`` messages.

        While paused it still calls ``consume`` (which returns nothing for paused partitions), so the consumer
        keeps its group membership however long the handler takes.
        """
        consumer = self.consumer
        self._apply_stores(consumer)
        try:
            if self._paused:
                assignment = consumer.assignment()  # paused again each time: covers newly assigned partitions
                if assignment:
                    consumer.pause(assignment)
                self._consumer_paused = True
            elif self._consumer_paused or self._assigned_since_poll:
                assignment = consumer.assignment()
                if assignment:
                    consumer.resume(assignment)
                self._consumer_paused = False
            self._assigned_since_poll = False
        except KafkaException as exc:
            log.warning("pause/resume failed: %s", exc)
        if self._paused:
            return list(consumer.consume(1, self.config.poll_timeout_s))
        return consume_available(consumer, n, self.config.poll_timeout_s)

    def _apply_stores(self, consumer: Consumer) -> None:
        """Store the queued offsets (highest per partition) on the consumer; call from the poll thread only."""
        latest: dict[tuple[str, int], int] = {}
        while self._to_store:
            tp = self._to_store.popleft()
            key = (tp.topic, tp.partition)
            latest[key] = max(latest.get(key, -1), tp.offset)
        for (topic, partition), offset in latest.items():
            try:
                consumer.store_offsets(offsets=[TopicPartition(topic, partition, offset)])
            except KafkaException as exc:  # partition no longer assigned: its new owner redoes it
                log.debug("store_offsets skipped topic=%s partition=%d: %s", topic, partition, exc)

    def _dispatch(self, msgs: list[Message]) -> None:
        batch: list[Incoming] = []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    self._fatal = KafkaException(err)
                log.warning("consume error role=%s: %s", self.config.role, err)
                continue
            inc = incoming_of(msg)
            self.tracker.add(inc.topic, inc.partition, inc.offset)
            batch.append(inc)
        self.metrics.consumed.labels(self.config.role).inc(len(batch))
        self.metrics.in_flight.labels(self.config.role).set(self.tracker.in_flight())
        for i in range(0, len(batch), self.config.batch_max):
            chunk = batch[i : i + self.config.batch_max]
            task = asyncio.ensure_future(self._process(chunk))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _process(self, batch: list[Incoming]) -> None:
        role = self.config.role
        self.metrics.batch_size.labels(role).observe(len(batch))
        t0 = time.perf_counter()
        try:
            results = [list(outs) for outs in await self.handler(batch)]
            if len(results) != len(batch):
                raise RuntimeError(f"handler returned {len(results)} output lists for {len(batch)} inputs")
        except Exception as exc:  # the handler chose to raise: stop without committing these inputs
            self.metrics.handler_errors.labels(
                role, exc.error_class if isinstance(exc, RagError) else type(exc).__name__
            ).inc()
            log.exception("handler failed role=%s batch=%d first=%s/%d/%d; stopping without committing it",
                          role, len(batch), batch[0].topic, batch[0].partition, batch[0].offset)  # fmt: skip
            if self._fatal is None:
                self._fatal = exc
            self.request_stop()
            return
        self.metrics.handle_seconds.labels(role).observe(time.perf_counter() - t0)
        for inc, outputs in zip(batch, results, strict=True):
            await self._produce_for(inc, outputs)

    async def _produce_for(self, inc: Incoming, outputs: list[Output]) -> None:
        if not outputs:
            self._finish(inc)
            return
        remaining = [len(outputs)]

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                log.error(
                    "delivery failed topic=%s for input topic=%s partition=%d offset=%d: %s",
                    msg.topic(),
                    inc.topic,
                    inc.partition,
                    inc.offset,
                    err,
                )
                if self._fatal is None:
                    self._fatal = KafkaException(err)
                self.request_stop()
                return
            self.metrics.produced.labels(self.config.role, msg.topic()).inc()
            if msg.topic() == self.config.dead_letter_topic:
                self.metrics.dead_letters.labels(self.config.role).inc()
            remaining[0] -= 1
            if remaining[0] == 0:
                self._finish(inc)

        for out in outputs:
            await self._produce(out, on_delivery, inc)

    async def _produce(self, out: Output, on_delivery: DeliveryCallback, inc: Incoming | None = None) -> None:
        while True:
            try:
                await self.producer.produce_async(
                    out.topic, out.value, out.key, out.headers, on_delivery, partition=out.partition
                )
                return
            except KafkaException as exc:  # refused locally (e.g. larger than message.max.bytes)
                if inc is None or out.topic == self.config.dead_letter_topic:
                    raise
                log.error("output refused by the producer topic=%s bytes=%d: %s; dead-lettering the input",
                          out.topic, len(out.value), exc)  # fmt: skip
                err = PromptTooLargeError(f"output to {out.topic} of {len(out.value)} bytes refused: {exc}")
                out = dead_letter(inc, topic=self.config.dead_letter_topic, stage=self.config.role, error=err)
                inc = None

    def _finish(self, inc: Incoming) -> None:
        next_offset = self.tracker.finish(inc.topic, inc.partition, inc.offset)
        self.metrics.in_flight.labels(self.config.role).set(self.tracker.in_flight())
        if next_offset is not None:
            self._to_store.append(TopicPartition(inc.topic, inc.partition, next_offset))
        loop = self._loop
        if self._waiting_capacity and loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._capacity.set)
            except RuntimeError:  # the loop closed meanwhile (a late delivery report at shutdown)
                pass

    async def _shutdown(self) -> None:
        role = self.config.role
        budget = self.config.shutdown_timeout_s
        t0 = time.monotonic()
        log.info("worker stopping role=%s in_flight=%d", role, self.tracker.in_flight())
        if self._tasks:
            done, pending = await asyncio.wait(set(self._tasks), timeout=max(0.0, budget * 0.6))
            for task in pending:
                task.cancel()
            if pending:
                log.warning("abandoned %d in-flight batches at shutdown (uncommitted, redone later)", len(pending))
        left = max(0.5, budget - (time.monotonic() - t0))
        loop = asyncio.get_running_loop()
        self._delivery_stop.set()
        if self._delivery_thread.is_alive():
            await loop.run_in_executor(None, self._delivery_thread.join, 1.0)
        unflushed = await loop.run_in_executor(None, self.producer.flush, min(left * 0.5, 10.0))
        if unflushed:
            log.warning("%d messages not delivered at shutdown; their inputs stay uncommitted", unflushed)
        left = max(0.5, budget - (time.monotonic() - t0))
        closer = threading.Thread(target=self._commit_and_close, name=f"{role}-close", daemon=True)
        closer.start()
        await loop.run_in_executor(None, closer.join, left)
        if closer.is_alive():
            log.warning("consumer close did not finish within the shutdown bound; exiting anyway")
        self._poll_pool.shutdown(wait=False, cancel_futures=True)
        log.info("worker stopped role=%s in %.2f s", role, time.monotonic() - t0)

    def _commit_and_close(self) -> None:
        self._apply_stores(self.consumer)
        try:
            if self._fatal is None:
                self.consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("final commit failed: %s", exc)
        try:
            self.consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("consumer close failed: %s", exc)


def _resume_quietly(consumer: Consumer, partitions: list[TopicPartition]) -> None:
    """Clear the application pause of partitions leaving the assignment (so a later re-assignment starts
    fetching); an error (partition unknown to the client) is logged and ignored."""
    if not partitions:
        return
    try:
        consumer.resume(partitions)
    except KafkaException as exc:
        log.debug("resume of departing partitions failed: %s", exc)


def _fmt(partitions: list[TopicPartition]) -> str:
    return ",".join(f"{tp.topic}[{tp.partition}]" for tp in partitions)


def build_worker_loop(
    settings: Settings,
    *,
    role: str,
    topics: list[str],
    handler: Handler,
    max_in_flight: int,
    batch_max: int,
    registry: CollectorRegistry | None = None,
    group: str | None = None,
    metrics: LoopMetrics | None = None,
) -> WorkerLoop:
    """A worker loop on the settings' cluster: its group consumer, its producer and its metrics.

    Args:
        settings: Kafka connection, worker bounds (shutdown timeout), topic names (the dead-letter topic).
        role: the worker's role (logs, metric labels, default consumer group ``<topics.prefix><role>``).
        topics: the input topics.
        handler: the stream runner's ``handle`` (or any :data:`Handler`).
        max_in_flight: messages handed to the handler and not finished, at most.
        batch_max: largest micro-batch handed to one handler call.
        registry: where the loop's metrics go (a private registry if omitted).
        group: the consumer group; default ``settings.worker.group_id`` or ``<topics.prefix><role>``.
        metrics: the loop metrics to use (several loops of one process share one bundle; labels tell them
            apart); default: a new bundle in ``registry``.
    """
    group_id = group or settings.worker.group_id or settings.topics.prefix + role
    return WorkerLoop(
        LoopConfig(
            role=role,
            topics=topics,
            dead_letter_topic=settings.topics.name("dead_letter"),
            max_in_flight=max_in_flight,
            batch_max=batch_max,
            shutdown_timeout_s=settings.worker.shutdown_timeout_s,
        ),
        Consumer(consumer_config(settings.kafka, group_id)),
        KafkaProducer(settings.kafka, poll_after_produce=False),
        handler,
        metrics or build_loop_metrics(registry, role=role),
    )


class Runner(Protocol):
    """What :func:`serve_handler` needs of a stream runner: its handler and a stop check it consults."""

    stopping: Callable[[], bool]

    async def handle(self, batch: list[Incoming]) -> list[list[Output]]:
        """Process one micro-batch; one output list per input."""
        ...


async def serve_handler(
    settings: Settings,
    runner: Runner,
    *,
    role: str,
    topics: list[str],
    max_in_flight: int,
    batch_max: int,
    registry: CollectorRegistry,
) -> None:
    """Run one worker loop for ``runner`` until SIGTERM/SIGINT: the loop of :func:`build_worker_loop` (its metrics
    in ``registry``, which the caller serves: :func:`workers.ports.start_metrics_server`, first thing at start-up),
    the runner told when the loop stops.

    Raises:
        FatalWorkerError: see :meth:`WorkerLoop.run`.
    """
    loop = build_worker_loop(
        settings,
        role=role,
        topics=topics,
        handler=runner.handle,
        max_in_flight=max_in_flight,
        batch_max=batch_max,
        registry=registry,
    )
    runner.stopping = loop.is_stopping
    loop.install_signal_handlers()
    await loop.run()
