"""Reading an LLM server's answer, streamed or whole, into a :class:`Generation`, passing the text on as it comes.

Used by :class:`workers.adapters.llm_server.LLMServerClient` for both APIs (the Messages API's chunks and TGI's
``/generate_stream`` events). The stop text is cut as the pieces arrive (:class:`StopTextFilter`), so what is
passed to the caller's :data:`OnDelta` callback never contains a stop sequence, and the deltas joined are exactly
the Generation's text.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from workers.adapters.interfaces import Generation
from workers.adapters.llm_text import StopTextFilter, normalize_finish_reason
from workers.contracts.errors import LLMLoadingError

#: Called with each piece of the answer's text as soon as it is known not to be (the start of) a stop sequence.
OnDelta = Callable[[str], Awaitable[None]]


@dataclass
class Acc:
    """What a generation has brought so far: the text (stop text cut), counts, finish reason, TTFT.

    ``add`` keeps what the stop filter lets through; :meth:`take` hands out what was kept since the last call (the
    deltas for the caller's callback).
    """

    stop: StopTextFilter
    parts: list[str] = field(default_factory=list)
    tokens: int = 0
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_id: str | None = None
    ttft: float | None = None
    _taken: int = 0
    _finished: bool = False

    def add(self, piece: str) -> None:
        """Take the next piece of streamed text (the stop filter decides what is kept)."""
        out = self.stop.feed(piece)
        if out:
            self.parts.append(out)

    def finish_text(self) -> None:
        """The end of the text: keep what the stop filter held back (once)."""
        if not self._finished:
            self._finished = True
            tail = self.stop.finish()
            if tail:
                self.parts.append(tail)

    def take(self) -> str:
        """The text kept since the last call ("" when nothing new)."""
        new = "".join(self.parts[self._taken :])
        self._taken = len(self.parts)
        return new

    def generation(self, t0: float) -> Generation:
        """The finished Generation; ``t0`` is the attempt's start (``time.perf_counter()`` seconds)."""
        self.finish_text()
        t1 = time.perf_counter()
        return Generation(
            text="".join(self.parts),
            finish_reason=normalize_finish_reason(self.finish_reason, stopped_at_sequence=self.stop.stopped),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens or self.tokens,
            model_id=self.model_id,
            ttft_ms=((self.ttft or t1) - t0) * 1000.0,
            total_ms=(t1 - t0) * 1000.0,
            attempts=1,
        )


def read_usage(usage: Any, acc: Acc) -> None:
    """Token counts of an OpenAI ``usage`` object (or nothing when ``None``)."""
    if usage is not None:
        acc.prompt_tokens = usage.prompt_tokens or 0
        acc.completion_tokens = usage.completion_tokens or 0


def chat_chunk(chunk: Any, acc: Acc) -> None:
    """One chunk of a Messages API stream."""
    if getattr(chunk, "model", None):
        acc.model_id = chunk.model
    for choice in chunk.choices or []:
        delta = choice.delta
        if delta is not None and delta.content:
            acc.add(delta.content)
            acc.tokens += 1
        if choice.finish_reason:
            acc.finish_reason = choice.finish_reason
    read_usage(getattr(chunk, "usage", None), acc)


def tg_chunk(chunk: Any, acc: Acc) -> None:
    """One event of TGI's ``/generate_stream``."""
    tok = chunk.token
    if tok is not None and not tok.special:
        acc.add(tok.text)
    acc.tokens += 1
    if chunk.details is not None:
        acc.finish_reason = str(chunk.details.finish_reason)
        acc.completion_tokens = chunk.details.generated_tokens or acc.tokens


async def pass_on(acc: Acc, on_delta: OnDelta | None) -> None:
    """Hand the text ``acc`` has let through since the last call to ``on_delta`` (awaited; nothing when empty)."""
    if on_delta is not None:
        new = acc.take()
        if new:
            await on_delta(new)


async def whole(acc: Acc, text: str, t0: float, on_delta: OnDelta | None) -> Generation:
    """The Generation of an answer that came in one piece (no streaming): ``text`` through the stop filter, passed
    to ``on_delta`` at once."""
    acc.add(text)
    acc.finish_text()
    await pass_on(acc, on_delta)
    return acc.generation(t0)


async def collect(
    stream: Any,
    t0: float,
    on_chunk: Callable[[Any, Acc], None],
    stop: list[str],
    on_delta: OnDelta | None = None,
) -> Generation | None:
    """Read a stream to its end: the Generation, or None when it ended (or broke off) before its first token
    without a finish reason. Each new piece of text is passed to ``on_delta`` (awaited) as it is known.

    Raises:
        LLMLoadingError: the stream ended after some tokens without a finish reason (the server went away in the
            middle of the answer; retryable, no partial answer is returned).
        httpx.TransportError: the body broke off after some tokens, or a timeout.
    """
    acc = Acc(StopTextFilter(stop))
    try:
        async for chunk in stream:
            if acc.ttft is None:
                acc.ttft = time.perf_counter()
            on_chunk(chunk, acc)
            await pass_on(acc, on_delta)
    except httpx.TransportError as exc:  # the body broke off (llama-cpp-python refusing a prompt mid-response)
        if acc.tokens or isinstance(exc, httpx.TimeoutException):
            raise
        return None
    if acc.finish_reason is None:
        if acc.tokens == 0:
            return None
        raise LLMLoadingError(f"the LLM stream ended after {acc.tokens} tokens without a finish reason")
    acc.finish_text()
    await pass_on(acc, on_delta)
    return acc.generation(t0)
