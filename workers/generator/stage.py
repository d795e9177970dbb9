"""The generator stage: Prompts in, Responses out, through an injected LLM (an HTTP server or an in-process engine).

It knows no transport and no answer store: the stream runner (:mod:`workers.stream.runner`) decodes, checks
expiry, re-emits answers already given, remembers new ones, produces and dead-letters. Per prompt the stage
returns the answer, or a :class:`Failure` carrying the error answer it built (with the timings, sources and
provenance the client would want):

* retryable LLM failures that exhausted the adapter's retries → ``model_unavailable`` (not dead-lettered: the
  model was away, the prompt is fine);
* permanent LLM failures (the server rejected the input, an error inside the stream) → ``error`` and a dead letter.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from workers.adapters.interfaces import LLM, Generation
from workers.contracts.errors import LLMRetryableError, PermanentError
from workers.contracts.messages import ErrorInfo, Prompt, Response, ResponseStatus, Source, Usage
from workers.generator.citations import cite
from workers.generator.metrics import GeneratorMetrics
from workers.stream.results import Failure

STAGE = "generator"


class GeneratorStage:
    """``generate(prompts) -> [Response | Failure]``: the prompts of a micro-batch are answered concurrently.

    Args:
        llm: the LLM adapter (its own bound on calls in flight and retries).
        metrics: generator metrics (a private registry if omitted).
    """

    name = STAGE

    def __init__(self, llm: LLM, metrics: GeneratorMetrics | None = None, attribution_threshold: float = 0.5) -> None:
        self.llm = llm
        self.metrics = metrics or GeneratorMetrics()
        self.attribution_threshold = attribution_threshold

    async def run(self, inputs: Sequence[Prompt]) -> list[Response | Failure]:
        """Answer each prompt; one result per prompt, in order."""
        return list(await asyncio.gather(*(self.generate(p) for p in inputs)))

    async def generate(self, prompt: Prompt) -> Response | Failure:
        """Answer one prompt (see the module docstring for the failures)."""
        t_start = time.perf_counter()
        now = datetime.now(UTC)
        timings = dict(prompt.timings_ms)
        timings["generator_queue_ms"] = max(0.0, (now - prompt.created_at).total_seconds() * 1000.0)
        params = prompt.request.generation.model_copy(update={"max_new_tokens": prompt.max_new_tokens})
        try:
            gen = await self.llm.generate(list(prompt.messages), params)
        except LLMRetryableError as exc:
            info = ErrorInfo(error_class=exc.error_class, message=str(exc)[:2000], stage=STAGE)
            resp = self.response(prompt, "model_unavailable", timings, error=info, attempts=self.llm.max_attempts)
            return Failure(exc, status="model_unavailable", dead_letter=False, response=resp)
        except PermanentError as exc:
            info = ErrorInfo(error_class=exc.error_class, message=str(exc)[:2000], stage=STAGE)
            return Failure(exc, response=self.response(prompt, "error", timings, error=info))
        self.metrics.ttft.observe(gen.ttft_ms / 1000.0)
        self.metrics.total.observe(gen.total_ms / 1000.0)
        self.metrics.tokens.inc(gen.completion_tokens)
        timings["llm_ttft_ms"] = gen.ttft_ms
        timings["llm_total_ms"] = gen.total_ms
        timings["generator_ms"] = (time.perf_counter() - t_start) * 1000.0
        return self.response(prompt, "ok", timings, generation=gen)

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
