"""The generator stage: Prompts in, Responses out, through an injected LLM (an HTTP server or an in-process engine).

It knows no transport and no answer store: the stream runner (:mod:`workers.stream.runner`) decodes, checks
expiry, re-emits answers already given, remembers new ones, produces and dead-letters. Per prompt the stage
returns the answer, or a :class:`Failure` carrying the error answer it built (with the timings, sources and
provenance the client would want):

* retryable LLM failures that exhausted the adapter's retries → ``model_unavailable`` (not dead-lettered: the
  model was away, the prompt is fine);
* permanent LLM failures (the server rejected the input, an error inside the stream) → ``error`` and a dead letter;
* a request whose client went away (:class:`~workers.adapters.interfaces.CancelWatch`: a cancel on the control
  topic) → ``cancelled``: no LLM call when the cancel came first, else the generation is stopped (the HTTP stream
  to the server is closed, which stops the server too), and the LLM time saved is counted (an estimate).

Seeds: a generation uses the request's seed, else one derived from the request id (:func:`seed_for`), so a prompt
redelivered after a generator crash regenerates the same text. A request that asks for its tokens
(``Request.stream_tokens``) gets them through the injected :class:`~workers.adapters.interfaces.TokenSink` as they
are generated, each LLM call a new *attempt* (a number higher than any earlier attempt of this replica: microseconds
since the epoch); the final event is delivered before the Response is returned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from workers.adapters.interfaces import LLM, CancelWatch, Generation, OnText, TokenSink, TokenStream
from workers.contracts.errors import LLMRetryableError, PermanentError, RequestCancelledError
from workers.contracts.messages import (
    ErrorInfo,
    GenerationParams,
    Prompt,
    Request,
    Response,
    ResponseStatus,
    Source,
    Usage,
)
from workers.generator.citations import cite
from workers.generator.metrics import GeneratorMetrics
from workers.stream.results import Failure

STAGE = "generator"

log = logging.getLogger(__name__)


def seed_for(request: Request) -> int:
    """The seed of ``request``'s generation: its own, else the first 31 bits of its request id (the same for every
    delivery of the request, so a redelivered prompt regenerates the same text)."""
    if request.generation.seed is not None:
        return request.generation.seed
    return int.from_bytes(request.request_id.bytes[:4], "big") & 0x7FFF_FFFF


class _Progress:
    """What one generation has streamed so far: the tokens counted, the attempt, the token stream (if any)."""

    def __init__(self, stage: GeneratorStage, stream: TokenStream | None) -> None:
        self.stage = stage
        self.stream = stream
        self.call = 0
        self.attempt = 0
        self.tokens = 0
        self.first_at: float | None = None

    async def on_text(self, delta: str, call: int) -> None:
        if call != self.call:  # a new LLM call (a retry) starts the text anew: a new attempt
            self.call, self.attempt, self.tokens, self.first_at = call, self.stage.next_attempt(), 0, None
        self.tokens += 1
        if self.first_at is None:
            self.first_at = time.perf_counter()
        if self.stream is not None:
            try:
                await self.stream.text(self.attempt, delta)
            except Exception as exc:  # the answer still goes out as the Response
                log.warning("token stream failed, continuing without it: %s", exc)
                self.stream = None

    def close(self) -> None:
        """No final event will come (failed or cancelled): stop the token stream's pending sends."""
        if self.stream is not None:
            self.stream.close()
            self.stream = None

    def seconds_per_token(self) -> float:
        """Mean seconds between the tokens streamed so far (0 with fewer than two)."""
        if self.first_at is None or self.tokens < 2:
            return 0.0
        return (time.perf_counter() - self.first_at) / (self.tokens - 1)


class GeneratorStage:
    """``generate(prompts) -> [Response | Failure]``: the prompts of a micro-batch are answered concurrently.

    Args:
        llm: the LLM adapter (its own bound on calls in flight and retries).
        metrics: generator metrics (a private registry if omitted).
    """

    name = STAGE

    def __init__(
        self,
        llm: LLM,
        metrics: GeneratorMetrics | None = None,
        attribution_threshold: float = 0.5,
        *,
        tokens: TokenSink | None = None,
        cancels: CancelWatch | None = None,
    ) -> None:
        self.llm = llm
        self.metrics = metrics or GeneratorMetrics()
        self.attribution_threshold = attribution_threshold
        self.tokens = tokens
        self.cancels = cancels
        self._last_attempt = 0

    def next_attempt(self) -> int:
        """A new attempt number: microseconds since the epoch, at least one more than the last one given."""
        self._last_attempt = max(time.time_ns() // 1000, self._last_attempt + 1)
        return self._last_attempt

    async def run(self, inputs: Sequence[Prompt]) -> list[Response | Failure]:
        """Answer each prompt; one result per prompt, in order."""
        return list(await asyncio.gather(*(self.generate(p) for p in inputs)))

    async def generate(self, prompt: Prompt) -> Response | Failure:
        """Answer one prompt (see the module docstring for the failures)."""
        t_start = time.perf_counter()
        now = datetime.now(UTC)
        timings = dict(prompt.timings_ms)
        timings["generator_queue_ms"] = max(0.0, (now - prompt.created_at).total_seconds() * 1000.0)
        params = prompt.request.generation.model_copy(
            update={"max_new_tokens": prompt.max_new_tokens, "seed": seed_for(prompt.request)}
        )
        if self.cancels is not None and self.cancels.is_cancelled(prompt.request_id):
            return self._cancelled(prompt, timings, None)
        stream = self.tokens.open(prompt.request) if self.tokens is not None and prompt.request.stream_tokens else None
        progress = _Progress(self, stream)
        on_text = progress.on_text if stream is not None or self.cancels is not None else None
        try:
            gen = await self._generate(prompt, params, on_text)
            if gen is None:
                return self._cancelled(prompt, timings, progress)
        except LLMRetryableError as exc:
            progress.close()
            info = ErrorInfo(error_class=exc.error_class, message=str(exc)[:2000], stage=STAGE)
            resp = self.response(prompt, "model_unavailable", timings, error=info, attempts=self.llm.max_attempts)
            return Failure(exc, status="model_unavailable", dead_letter=False, response=resp)
        except PermanentError as exc:
            progress.close()
            info = ErrorInfo(error_class=exc.error_class, message=str(exc)[:2000], stage=STAGE)
            return Failure(exc, response=self.response(prompt, "error", timings, error=info))
        except BaseException:
            progress.close()
            raise
        self.metrics.ttft.observe(gen.ttft_ms / 1000.0)
        self.metrics.total.observe(gen.total_ms / 1000.0)
        self.metrics.tokens.inc(gen.completion_tokens)
        timings["llm_ttft_ms"] = gen.ttft_ms
        timings["llm_total_ms"] = gen.total_ms
        timings["generator_ms"] = (time.perf_counter() - t_start) * 1000.0
        resp = self.response(prompt, "ok", timings, generation=gen)
        if progress.stream is not None:
            try:
                await progress.stream.finish(
                    progress.attempt or self.next_attempt(), resp.finish_reason, resp.usage, list(prompt.passages)
                )
            except Exception as exc:  # the Response is the answer; the reader ends its stream with it
                log.warning("final token event not delivered request_id=%s: %s", prompt.request_id, exc)
        return resp

    async def _generate(self, prompt: Prompt, params: GenerationParams, on_text: OnText | None) -> Generation | None:
        """The LLM call, raced against the request's cancel when cancels are watched: ``None`` when cancelled
        (the call is stopped and waited for)."""
        call = self.llm.generate(list(prompt.messages), params, on_text)
        if self.cancels is None:
            return await call
        generation = asyncio.ensure_future(call)
        watch = asyncio.ensure_future(self.cancels.wait_cancelled(prompt.request_id))
        try:
            done, _ = await asyncio.wait({generation, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not generation.done():
                generation.cancel()
        if generation in done:
            return generation.result()
        await asyncio.gather(generation, return_exceptions=True)  # the HTTP stream is closed: the server stops
        return None

    def _cancelled(self, prompt: Prompt, timings: dict[str, float], progress: _Progress | None) -> Failure:
        """The ``cancelled`` answer; the LLM time it saved is counted (remaining budget × time per token so far)."""
        self.metrics.cancelled.inc()
        streamed = progress.tokens if progress is not None else 0
        saved_tokens = max(0, prompt.max_new_tokens - streamed)
        per_token = progress.seconds_per_token() if progress is not None else 0.0
        self.metrics.tokens_saved.inc(saved_tokens)
        self.metrics.seconds_saved.inc(saved_tokens * per_token)
        if progress is not None:
            progress.close()
        when = "during generation" if progress is not None else "before generation"
        err = RequestCancelledError(f"the client cancelled request {prompt.request_id} ({when}, {streamed} tokens)")
        info = ErrorInfo(error_class=err.error_class, message=str(err), stage=STAGE)
        resp = self.response(prompt, "cancelled", timings, error=info, attempts=1 if progress is not None else 0)
        return Failure(err, status="cancelled", dead_letter=False, response=resp)

    def response(
        self,
        prompt: Prompt,
        status: ResponseStatus,
        timings: dict[str, float],
        *,
        generation: Generation | None = None,
        error: ErrorInfo | None = None,
        attempts: int = 1,
    ) -> Response:
        """The Response to ``prompt``: the answer (or the error), usage, model, sources, timings (ms), provenance."""
        info = self.llm.server_info
        now = datetime.now(UTC)
        timings["end_to_end_ms"] = max(0.0, (now - prompt.request.created_at).total_seconds() * 1000.0)
        usage = Usage()
        if generation is not None:
            p = generation.prompt_tokens or prompt.prompt_tokens
            usage = Usage(
                prompt_tokens=p,
                completion_tokens=generation.completion_tokens,
                total_tokens=p + generation.completion_tokens,
            )
        params = prompt.request.generation.model_copy(update={"max_new_tokens": prompt.max_new_tokens})
        texts = [p.text for p in prompt.passages]
        citations = cite(generation.text, texts, self.attribution_threshold) if generation is not None else None
        cited = set(citations.cited) if citations is not None else set()
        how = citations.cited_by if citations is not None else None
        return Response(
            request_id=prompt.request_id,
            created_at=now,
            status=status,
            answer=generation.text if generation is not None else None,
            finish_reason=generation.finish_reason if generation is not None else None,
            usage=usage,
            model_id=(generation.model_id if generation is not None and generation.model_id else None)
            or (info.model_id if info else None),
            model_revision=info.model_sha if info else None,
            sources=[
                Source(
                    document_id=p.document_id,
                    chunk_id=p.chunk_id,
                    score=p.score,
                    cited=i in cited,
                    cited_by=how if i in cited else None,
                )
                for i, p in enumerate(prompt.passages)
            ],
            groundedness=citations.groundedness if citations is not None else None,
            timings_ms=timings,
            error=error,
            attempts=generation.attempts if generation is not None else attempts,
            provenance=prompt.provenance.model_copy(
                update={
                    "llm_model_id": info.model_id if info else None,
                    "llm_model_revision": info.model_sha if info else None,
                    "llm_api": self.llm.api,
                    "generation": params,
                }
            ),
        )
