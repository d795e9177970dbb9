"""The answer's text as it is generated, batched into :class:`TokenEvent` records (pure: no Kafka here).

The generator stage opens a :class:`TokenStream` per request that asks for one (``Request.stream_tokens``) and
passes it each piece of text the LLM adapter streams. :class:`BatchingTokenSink` numbers the pieces into events and
batches them so that a 500-token answer is not 500 messages: the first piece of an attempt is sent at once (time to
first token), later ones when ``max_tokens`` pieces are pending or the oldest has waited ``max_delay_ms``. The
final event (finish reason, usage, the passages) carries what is still pending and is awaited until delivered, so
it reaches the reader before the Response the runner produces afterwards. Where events go is the
:class:`TokenPublisher`'s business (the generator's ``app.py`` wires a Kafka producer to the request's reply
partition of the tokens topic).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from workers.contracts.messages import Passage, Request, TokenEvent, Usage

log = logging.getLogger(__name__)


class TokenPublisher(Protocol):
    """Sends token events of a request (implementation: the generator app's Kafka publisher)."""

    def send(self, event: TokenEvent, request: Request) -> None:
        """Queue ``event`` without waiting for its delivery.

        Raises:
            RagError: the event could not be queued.
        """
        ...

    async def send_and_wait(self, event: TokenEvent, request: Request) -> None:
        """Queue ``event`` and return once it (and everything queued before it) is delivered.

        Raises:
            RagError: the event was not delivered.
        """
        ...


class BatchingTokenSink:
    """Opens a batching :class:`TokenStream` per request (see the module docstring).

    Args:
        publisher: where the events go.
        max_tokens: pieces (tokens, as the LLM streams them) gathered into one event at most.
        max_delay_ms: longest a piece waits for others before its event is sent (ms).
    """

    def __init__(self, publisher: TokenPublisher, max_tokens: int = 8, max_delay_ms: float = 5.0) -> None:
        if max_tokens < 1 or max_delay_ms < 0:
            raise ValueError("max_tokens must be >= 1 and max_delay_ms >= 0")
        self.publisher = publisher
        self.max_tokens = max_tokens
        self.max_delay_s = max_delay_ms / 1000.0

    def open(self, request: Request) -> TokenStream:
        """The token stream of ``request``'s answer."""
        return TokenStream(self, request)


class TokenStream:
    """The events of one request: numbered per attempt, batched (see the module docstring)."""

    def __init__(self, sink: BatchingTokenSink, request: Request) -> None:
        self.sink = sink
        self.request = request
        self.attempt: int | None = None
        self.seq = 0
        self.offset = 0
        self.events = 0
        self._pending: list[str] = []
        self._timer: asyncio.TimerHandle | None = None

    async def text(self, attempt: int, delta: str) -> None:
        """The next piece of attempt ``attempt``'s text; a new attempt starts over (its old pending text dropped)."""
        if attempt != self.attempt:
            self._cancel_timer()
            self.attempt, self.seq, self.offset, self._pending = attempt, 0, 0, []
        self._pending.append(delta)
        if self.seq == 0 or len(self._pending) >= self.sink.max_tokens or self.sink.max_delay_s == 0:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.sink.max_delay_s, self._flush)

    async def finish(self, attempt: int, finish_reason: str | None, usage: Usage, passages: list[Passage]) -> None:
        """The final event of ``attempt`` with what is pending; returns once delivered.

        Raises:
            RagError: the publisher could not deliver it.
        """
        if attempt != self.attempt:
            self.attempt, self.seq, self.offset, self._pending = attempt, 0, 0, []
        self._cancel_timer()
        event = self._event(final=True, finish_reason=finish_reason, usage=usage, passages=passages)
        await self.sink.publisher.send_and_wait(event, self.request)

    def close(self) -> None:
        """Stop sending (the generation ended without a final event: cancelled or failed)."""
        self._cancel_timer()
        self._pending = []

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _flush(self) -> None:
        self._timer = None
        if not self._pending:
            return
        try:
            self.sink.publisher.send(self._event(), self.request)
        except Exception as exc:  # the answer itself still goes out on the responses topic
            log.warning("token event not sent request_id=%s: %s", self.request.request_id, exc)

    def _event(
        self,
        *,
        final: bool = False,
        finish_reason: str | None = None,
        usage: Usage | None = None,
        passages: list[Passage] | None = None,
    ) -> TokenEvent:
        delta = "".join(self._pending)
        event = TokenEvent(
            request_id=self.request.request_id,
            attempt=self.attempt or 0,
            seq=self.seq,
            offset=self.offset,
            delta=delta,
            tokens=len(self._pending),
            final=final,
            finish_reason=finish_reason,
            usage=usage,
            passages=passages or [],
        )
        self.seq += 1
        self.offset += len(delta)
        self.events += 1
        self._pending = []
        return event
