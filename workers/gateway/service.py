"""The gateway's core, between HTTP and Kafka: send a Request, receive its token events and Response, cancel.

A replica owns one partition of the tokens and responses topics (``RAG_GATEWAY__REPLY_PARTITION``); every Request it
produces names that partition (``Request.reply_partition``), so the generator produces the request's token events
and its Response there, and the replica's :class:`~workers.kafka.replies.ReplyReader` reads only that partition. The
:class:`ReplyRouter` hands each reply to the request waiting for it (by request id; a reply nobody here waits for,
e.g. of another replica sharing the partition by mistake, is dropped without decoding).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field

from workers.contracts.errors import MessageError
from workers.contracts.messages import CancelEvent, Request, Response, TokenEvent
from workers.contracts.serde import decode, encode
from workers.kafka.reader import TopicRecord
from workers.kafka.streams import DeliveringProducer, cancel_output
from workers.settings import Settings
from workers.stream.records import Output

log = logging.getLogger(__name__)

#: What a waiting request receives.
Reply = TokenEvent | Response


@dataclass
class Waiter:
    """One request waiting for its replies."""

    request_id: uuid.UUID
    queue: asyncio.Queue[Reply] = field(default_factory=asyncio.Queue)
    finished: bool = False


class ReplyRouter:
    """Routes replies read in the reader's thread to the waiting requests on the event loop.

    Args:
        loop: the event loop the waiters live on.
        tokens_topic: the tokens topic (its records are TokenEvents; the others' Responses).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, tokens_topic: str) -> None:
        self.loop = loop
        self.tokens_topic = tokens_topic
        self.waiting: dict[uuid.UUID, Waiter] = {}
        self.dropped = 0

    def register(self, request_id: uuid.UUID) -> Waiter:
        """Start waiting for ``request_id``'s replies (before its Request is produced)."""
        waiter = Waiter(request_id)
        self.waiting[request_id] = waiter
        return waiter

    def release(self, request_id: uuid.UUID) -> None:
        """Stop waiting for ``request_id``."""
        self.waiting.pop(request_id, None)

    def on_records(self, batch: list[tuple[str, TopicRecord]]) -> None:
        """Decode the replies somebody waits for (in the reader's thread) and hand them over on the loop."""
        out: list[tuple[uuid.UUID, Reply]] = []
        for topic, rec in batch:
            try:
                rid = uuid.UUID(rec.headers.get("request_id", ""))
            except ValueError:
                rid = None
            if rid is not None and rid not in self.waiting:
                continue
            try:
                reply: Reply = (
                    decode(rec.value, TokenEvent) if topic == self.tokens_topic else decode(rec.value, Response)
                )
            except MessageError as exc:
                log.warning("reply not decoded topic=%s offset=%d: %s", topic, rec.offset, exc)
                continue
            if reply.request_id in self.waiting:
                out.append((reply.request_id, reply))
        if out:
            self.loop.call_soon_threadsafe(self._deliver, out)

    def _deliver(self, replies: list[tuple[uuid.UUID, Reply]]) -> None:
        for rid, reply in replies:
            waiter = self.waiting.get(rid)
            if waiter is None:
                self.dropped += 1
                continue
            waiter.queue.put_nowait(reply)


class GatewayCore:
    """Produces Requests and cancels; the router receives the replies.

    Args:
        settings: topic names.
        producer: the producer (delivery reports awaited).
        router: the reply router.
        partition: this replica's reply partition.
    """

    def __init__(self, settings: Settings, producer: DeliveringProducer, router: ReplyRouter, partition: int) -> None:
        self.requests_topic = settings.topics.name("requests")
        self.control_topic = settings.topics.name("control")
        self.producer = producer
        self.router = router
        self.partition = partition

    async def submit(self, request: Request) -> Waiter:
        """Register ``request`` and produce it; returns once the broker has it.

        Raises:
            RetryableError: the broker did not take it in time (the waiter is released).
        """
        waiter = self.router.register(request.request_id)
        rid = str(request.request_id)
        headers = {"request_id": rid}
        if request.deadline is not None:
            headers["deadline"] = request.deadline.isoformat()
        try:
            await self.producer.deliver(Output(self.requests_topic, encode(request), rid, headers))
        except BaseException:
            self.router.release(request.request_id)
            raise
        return waiter

    def cancel(self, request_id: uuid.UUID, reason: str = "client disconnected") -> None:
        """Tell the workers to stop on ``request_id`` (a cancel event on the control topic; not awaited)."""
        try:
            self.producer.send(cancel_output(self.control_topic, CancelEvent(request_id=request_id, reason=reason)))
        except BufferError as exc:
            log.warning("cancel not sent request_id=%s: %s", request_id, exc)

    def release(self, waiter: Waiter) -> None:
        """Stop waiting for ``waiter``'s replies."""
        self.router.release(waiter.request_id)
