"""The in-process LLM: an engine of the devstack LLM server hosted in this process (no HTTP, no Kafka).

``RAG_LLM__ENGINE=transformers`` (or ``simulated``) with ``RAG_LLM__ENGINE_ARGS="--model /path --max-total-tokens
4096"`` makes a worker (the generator, or a monolith) load the model itself instead of calling ``RAG_LLM__URL``.
The options are the devstack server's own command line (``python -m devstack.tgi --help``), so an engine is
configured the same way in-process and behind HTTP; for the simulated engine e.g. ``--ttft-ms 50
--per-token-ms 5 --capacity 8 --faults '[{"kind": "loading", "next": 2}]'``.

:class:`EngineLLM` implements the :class:`~workers.adapters.interfaces.LLM` protocol (and
:class:`~workers.adapters.interfaces.LLMTokenCounter`) with what the HTTP server does, reused rather than copied:
request validation, the token limits, the default and capped ``max_new_tokens``, admission up to
``--max-concurrent-requests`` and stop sequences come from :mod:`devstack.tgi.generation`; the bound on calls in
flight, the timeout, TTFT measurement and bounded retries from :func:`workers.adapters.llm_calls.generate_with_retries`
(the same as :class:`~workers.adapters.llm_server.LLMServerClient`). Unlike TGI's ``generated_text``, the returned
text ends before a stop sequence, as the Messages API returns it. Engine errors are translated by :func:`classify`.

The engine's busy time (seconds with at least one generation in flight) is kept in a
:class:`devstack.tgi.busy.BusyClock` and exported, when a registry is given, as ``engine_busy_seconds_total`` and
``engine_generations_total``, the same counters the HTTP server shows on its ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from devstack.tgi.__main__ import build_parser
from devstack.tgi.busy import BusyClock, register_busy_metrics
from devstack.tgi.engine import Engine, EngineError, EngineRejectedError, FinishEvent, TokenEvent
from devstack.tgi.engines import create_engine
from devstack.tgi.generation import (
    Admission,
    ServerLimits,
    TGIError,
    begin,
    chat_parameters,
    limits_from_args,
    prepare,
    render_chat,
    stream,
)
from workers.adapters.concurrency import ConcurrencyLimiter, build_limiter
from workers.adapters.interfaces import Generation, OnText, ServerInfo
from workers.adapters.llm_calls import OnDelta, error_for_status, generate_with_retries
from workers.adapters.llm_text import (
    StopTextFilter,
    cut_at_stop,
    fold_system,
    normalize_finish_reason,
    rejects_system_role,
)
from workers.contracts.errors import (
    ConfigError,
    GenerationError,
    LLMStreamError,
    LLMTimeoutError,
    ServiceUnavailableError,
)
from workers.contracts.messages import ChatMessage, GenerationParams
from workers.retry import RetryPolicy
from workers.settings import LLMSettings

log = logging.getLogger(__name__)


def classify(exc: BaseException) -> GenerationError:
    """Translate an engine-side exception into a ragstream generation error.

    :class:`EngineRejectedError` and the shared validation's ``TGIError`` by their status: 429 →
    ``LLMOverloadedError``, 503 → ``LLMLoadingError`` (retryable), 4xx → ``LLMValidationError`` (permanent);
    :class:`EngineError` (the model failed mid-generation) → ``LLMStreamError``; ``TimeoutError`` →
    ``LLMTimeoutError``; anything else → ``LLMStreamError``.
    """
    if isinstance(exc, GenerationError):
        return exc
    if isinstance(exc, EngineRejectedError | TGIError):
        return error_for_status(exc.status, f"{exc.error_type}: {exc.message}", source="LLM engine")
    if isinstance(exc, EngineError):
        return LLMStreamError(f"LLM engine failed during generation: {exc}")
    if isinstance(exc, TimeoutError):
        return LLMTimeoutError(f"LLM engine call timed out: {exc}")
    return LLMStreamError(f"unexpected LLM engine error: {type(exc).__name__}: {exc}")


class EngineLLM:
    """An engine of the devstack LLM server in this process, behind the ``LLM`` protocol.

    The engine is loaded on first use (:meth:`start`, called by :meth:`info` and :meth:`generate`; once, guarded
    by a lock). Build it with :meth:`from_settings` in wiring code; tests may pass an engine directly.

    Args:
        engine: The engine, not necessarily started (this object starts and closes it).
        limits: Token limits, stop-sequence count and concurrent requests, as the server would enforce them.
        settings: Bound on calls in flight, timeout (s) and retry bounds (the ``llm`` settings).
        registry: Where ``engine_busy_seconds_total`` and ``engine_generations_total`` go (None: nowhere).
        on_retry: Called with the error type's name each time a generation is retried (metrics hook).
        limiter: Bound on generation calls in flight; default ``build_limiter(settings)``.
        retry: Retry policy of one generation; default from ``settings``.
        busy: The engine's busy clock; default a new one.

    Attributes:
        api: ``"engine"``.
        max_attempts: Most attempts one :meth:`generate` makes (first included).
        system_role: ``native``, ``fold`` or ``auto`` (``llm.system_role``; ``auto`` becomes ``fold`` when the chat
            template refuses the system role).
        busy: Generations in flight and busy seconds of the engine.
    """

    def __init__(
        self,
        engine: Engine,
        limits: ServerLimits,
        settings: LLMSettings,
        *,
        registry: CollectorRegistry | None = None,
        on_retry: Callable[[str], None] | None = None,
        limiter: ConcurrencyLimiter | None = None,
        retry: RetryPolicy | None = None,
        busy: BusyClock | None = None,
    ) -> None:
        self.api: str = "engine"
        self.system_role: str = settings.system_role
        self.engine = engine
        self.limits = limits
        self.settings = settings
        self.limiter: ConcurrencyLimiter = limiter or build_limiter(settings)
        self.retry = retry or RetryPolicy(settings.max_attempts, settings.backoff_initial_s, settings.backoff_max_s)
        self.max_attempts = self.retry.max_attempts
        self.busy = busy or BusyClock()
        if registry is not None:
            register_busy_metrics(registry, self.busy)
        self._on_retry = on_retry
        self._admission = Admission()
        self._start_lock = asyncio.Lock()
        self._started = False
        self._closed = False
        self._info: ServerInfo | None = None

    @classmethod
    def from_settings(
        cls,
        llm: LLMSettings,
        registry: CollectorRegistry | None = None,
        *,
        on_retry: Callable[[str], None] | None = None,
    ) -> EngineLLM:
        """Build (without loading) the engine ``llm.engine`` from ``llm.engine_args``.

        ``llm.engine_args`` is split like a shell command line (``shlex``) and parsed with the devstack server's
        own parser, so every option of ``python -m devstack.tgi`` applies (``--model``, ``--max-input-tokens``,
        ``--max-total-tokens``, ``--max-concurrent-requests``, ``--default-max-new-tokens``, ``--ttft-ms`` ...);
        ``llm.engine`` overrides an ``--engine`` among them.

        Args:
            llm: The ``llm`` settings (engine name and options, limiter, timeout, retries).
            registry: Where the engine's busy counters go (the worker's ``/metrics`` registry).
            on_retry: Called with the error type's name on each retried generation.

        Returns:
            The adapter; the model loads on first use.

        Raises:
            ConfigError: unknown engine, options the parser rejects, or inconsistent limits.
        """
        try:
            argv = shlex.split(llm.engine_args)
        except ValueError as exc:
            raise ConfigError(f"RAG_LLM__ENGINE_ARGS cannot be split like a command line: {exc}") from None
        try:
            args = build_parser().parse_args([*argv, "--engine", llm.engine])
        except SystemExit:  # argparse has printed the reason to stderr
            raise ConfigError(
                f"invalid RAG_LLM__ENGINE_ARGS {llm.engine_args!r}; see `python -m devstack.tgi --help`"
            ) from None
        try:
            limits = limits_from_args(args)
            engine = create_engine(llm.engine, args)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"cannot build the LLM engine {llm.engine!r}: {exc}") from exc
        return cls(engine, limits, llm, registry=registry, on_retry=on_retry)

    # -- lifecycle

    async def start(self) -> None:
        """Load the engine, once: concurrent callers wait for the first load; a failed load is tried again.

        Raises:
            ServiceUnavailableError: the engine cannot load (model folder missing, ...) or was closed.
        """
        if self._started:
            return
        async with self._start_lock:
            if self._started:
                return
            if self._closed:
                raise ServiceUnavailableError("the in-process LLM engine is closed")
            t0 = time.monotonic()
            try:
                await self.engine.start()
            except Exception as exc:
                raise ServiceUnavailableError(f"cannot load the in-process LLM engine: {exc}") from exc
            self._started = True
            info = self.engine.info()
            log.info(
                "llm engine loaded model=%s max_input_tokens=%s max_total_tokens=%s seconds=%.1f",
                info.model_id,
                self.limits.max_input_tokens,
                self.limits.max_total_tokens,
                time.monotonic() - t0,
            )

    async def close(self) -> None:
        """Close the engine (free the model and its threads); later calls fail with ServiceUnavailableError."""
        async with self._start_lock:
            if self._closed:
                return
            self._closed = True
            self._started = False
            await self.engine.close()

    # -- what the engine says about itself

    @property
    def server_info(self) -> ServerInfo | None:
        """The engine's model and limits (``None`` until :meth:`info` succeeded once)."""
        return self._info

    async def info(self) -> ServerInfo:
        """Load the engine if needed; return its model id and revision, and the limits it enforces (tokens).

        Raises:
            ServiceUnavailableError: the engine cannot load.
        """
        if self._info is None:
            await self.start()
            ei = self.engine.info()
            self._info = ServerInfo(
                model_id=ei.model_id,
                model_sha=ei.model_sha,
                max_input_tokens=self.limits.max_input_tokens,
                max_total_tokens=self.limits.max_total_tokens,
                max_concurrent_requests=self.limits.max_concurrent_requests,
            )
        return self._info

    # -- token counting

    def count(self, texts: list[str]) -> list[int]:
        """Tokens the engine's tokenizer makes of each text (as the limits count a prompt; blocking, CPU).

        Raises:
            ServiceUnavailableError: the engine is not loaded yet (await :meth:`info` or :meth:`start` first).
        """
        if not self._started:
            raise ServiceUnavailableError("the in-process LLM engine is not loaded: await info() before count()")
        return [self.engine.count_tokens(t) for t in texts]

    # -- generation

    async def generate(
        self, messages: list[ChatMessage], params: GenerationParams, on_text: OnText | None = None
    ) -> Generation:
        """Generate an answer in this process, retrying retryable failures up to ``max_attempts`` attempts.

        Args:
            messages: The chat messages, rendered with the engine's chat template.
            params: Sampling parameters; ``max_new_tokens`` bounds the answer (tokens); ``stop`` sequences end
                it (the returned text stops before them).
            on_text: Awaited with each new piece of the text as the engine generates it (a stop sequence is never
                passed on) and the attempt's number (a retried attempt starts its text anew).

        Returns:
            The Generation: text, finish reason (``length`` or ``stop``, OpenAI's names), prompt and
            completion tokens (engine counts), TTFT and total time (ms) of the successful attempt, attempts.

        Raises:
            ServiceUnavailableError: the engine cannot load.
            LLMRetryableError: still failing after ``max_attempts`` attempts (overloaded, loading, timeout).
            LLMValidationError: the request breaks a limit or a parameter rule (no retry).
            LLMStreamError: the engine failed during generation (no partial answer is returned).
        """
        await self.start()  # outside the attempts: loading is not bounded by timeout_s
        return await generate_with_retries(
            lambda t0, on_delta: self._attempt(messages, params, t0, on_delta),
            limiter=self.limiter,
            retry=self.retry,
            timeout_s=self.settings.timeout_s,
            classify=classify,
            on_retry=self._on_retry,
            on_text=on_text,
        )

    def _render(self, messages: list[ChatMessage]) -> str:
        """The chat rendered with the engine's template; the system prompt folded into the first user turn when
        ``llm.system_role`` says so, or (``auto``) from the first time the template refuses the system role."""
        if self.system_role == "fold":
            messages = fold_system(messages)
        try:
            return render_chat(self.engine, [{"role": m.role, "content": m.content} for m in messages])
        except EngineRejectedError as exc:
            refused = any(m.role == "system" for m in messages) and rejects_system_role(exc.message)
            if self.system_role != "auto" or not refused:
                raise
            self.system_role = "fold"
            log.warning("llm engine system_role=fold from now on: its chat template refused a system message (%s)", exc)
            return render_chat(self.engine, [{"role": m.role, "content": m.content} for m in fold_system(messages)])

    async def _attempt(
        self, messages: list[ChatMessage], params: GenerationParams, t0: float, on_delta: OnDelta | None
    ) -> Generation:
        engine = self.engine
        request_id = await begin(engine)
        prompt = self._render(messages)
        gp = chat_parameters(params.max_new_tokens, params.temperature, params.top_p, params.seed, params.stop)
        prep = prepare(engine, self.limits, prompt, gp, chat=True, request_id=request_id)
        self._admission.admit(self.limits.max_concurrent_requests)
        try:
            tokens: list[TokenEvent] = []
            finish: FinishEvent | None = None
            first: float | None = None
            cut = StopTextFilter(prep.stop)
            events = stream(engine, prep, self.busy)
            async with contextlib.aclosing(events):
                async for ev in events:
                    if isinstance(ev, FinishEvent):
                        finish = ev
                        break
                    first = first if first is not None else time.perf_counter()
                    tokens.append(ev)
                    piece = cut.feed(ev.text) if not ev.special else ""
                    if piece and on_delta is not None:
                        await on_delta(piece)
            if finish is None:
                raise EngineError("engine ended without a finish event")
            tail = cut.finish()
            if tail and on_delta is not None:
                await on_delta(tail)
        finally:
            self._admission.release()
        t1 = time.perf_counter()
        text = "".join(t.text for t in tokens if not t.special)
        text = cut_at_stop(text, prep.stop) if finish.finish_reason == "stop_sequence" else text
        return Generation(
            text=text,
            finish_reason=normalize_finish_reason(finish.finish_reason),
            prompt_tokens=prep.input_length,
            completion_tokens=len(tokens),
            model_id=engine.info().model_id,
            ttft_ms=((first or t1) - t0) * 1000.0,
            total_ms=(t1 - t0) * 1000.0,
            attempts=1,
        )
