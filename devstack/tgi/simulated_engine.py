"""The "simulated" engine: deterministic filler tokens with no model, for reliability tests and benchmarks.

``python -m devstack.tgi --engine simulated`` serves TGI's API (every route of ``devstack.tgi.server``) with
an engine that needs no weights and no CPU: it sleeps (``asyncio.sleep``, so one process holds hundreds of
concurrent streams) for a configurable time to first token and time per output token, generates at most
``capacity`` requests at once (the others wait in a FIFO queue, as in TGI's continuous batching, where each
request in the batch advances one token per step), and injects faults from a schedule.

Tokenizer:
    A regex splits text into words with their leading whitespace (``" word"``), single punctuation
    characters (``" ,"``) and trailing whitespace; ids are CRC32 hashes into a 32000-token vocabulary. The
    same function counts prompt tokens for the limits, ``POST /tokenize`` and ``usage``. Generated text is
    filler words (``" lorem ipsum ..."``, one token each, chosen from a hash of the prompt and the seed), so
    tokenizing the output gives back exactly the generated token count. Generation always runs to
    ``max_new_tokens`` (finish reason "length"); stop sequences work as with any engine.

Fault schedule:
    A JSON list of rules, checked in order for each generation request (``/generate``, ``/generate_stream``,
    ``POST /``, ``/v1/chat/completions``) as it arrives; the first rule that matches decides the request's
    fault. Conditions of a rule (all given ones must hold; a rule with none matches every request):

    - ``"next": N``: the rule fires on the next N requests it matches, then never again.
    - ``"requests": [i, j]``: requests number i..j (inclusive, counted from 1 since the schedule was set).
    - ``"window_s": S``: for S seconds after the schedule was set.
    - ``"probability": p`` with ``"seed": s`` (default 0): fires with probability p, drawn from a random
      generator of the rule seeded with s (reproducible for the same request sequence).

    Kinds and their options:

    - ``overloaded``: HTTP 429 ``{"error": "Model is overloaded", "error_type": "overloaded"}``.
    - ``loading``: HTTP 503 ``{"error": "Model is loading", "error_type": "loading", "estimated_time": 20.0}``;
      option ``estimated_time`` (seconds).
    - ``validation``: HTTP 422 ``{"error": "Input validation error: ...", "error_type": "validation"}``.
    - ``hang``: accept the connection and send nothing for ``hang_s`` seconds (default 30), then serve the
      request normally (a client with a shorter timeout gives up first).
    - ``stream_error``: send ``after_tokens`` tokens (default 2), then fail as TGI does: inside a stream an
      event ``data:{"error": "...", "error_type": "generation"}``; without streaming HTTP 500 with that body.
    - ``slow``: generate with ``per_token_ms`` (and ``ttft_ms`` when given) instead of the configured times.

    Every kind takes an optional ``message``. Examples::

        [{"kind": "overloaded", "next": 2}]
        [{"kind": "loading", "window_s": 5, "estimated_time": 5.0}]
        [{"kind": "stream_error", "probability": 0.1, "seed": 7, "after_tokens": 3},
         {"kind": "slow", "requests": [10, 19], "per_token_ms": 200}]

Admin API (dev server only; TGI has no such routes), JSON in and out:

    - ``GET /admin/faults``: ``{"rules": [...]}``, the current schedule.
    - ``POST /admin/faults``: body a list of rules (or ``{"rules": [...]}``); replaces the schedule and
      restarts its request numbering and time window. 422 with the reason for an invalid rule.
    - ``DELETE /admin/faults``: no faults any more.
    - ``GET /admin/config``: engine settings and server limits.
    - ``POST /admin/config``: change any of ``ttft_ms``, ``per_token_ms``, ``capacity`` (engine, applies to
      requests that start generating afterwards; a larger capacity admits queued requests at once) and
      ``max_concurrent_requests``, ``max_input_tokens``, ``max_total_tokens`` (server limits). Returns what
      ``GET /admin/config`` returns.
    - ``GET /admin/stats``: counters since start or the last reset: ``requests_seen``, ``in_flight`` (held
      by the engine: hanging, queued or generating), ``hanging``, ``queued``, ``generating``,
      ``max_concurrent`` (most requests generating at once), ``max_queued``, ``completed``, ``failed``,
      ``cancelled`` (closed before the end: client gone, stop sequence), ``tokens_generated``, ``faults``
      (injected, by kind), ``server_in_flight`` (requests counted against ``max_concurrent_requests``).
    - ``DELETE /admin/stats``: reset the counters (gauges such as ``in_flight`` keep their value).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import random
import re
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from devstack.tgi.engine import (
    Engine,
    EngineError,
    EngineInfo,
    EngineRejectedError,
    FinishEvent,
    GenerationParams,
    TokenEvent,
    TokenSpan,
)

logger = logging.getLogger(__name__)

#: Model id reported in ``/info``.
SIMULATED_MODEL_ID = "ragstream/simulated-filler"
#: Size of the simulated vocabulary (token ids are in ``[3, VOCAB_SIZE)``; 0..2 are reserved).
VOCAB_SIZE = 32000
_TOKEN_RE = re.compile(r"\s*\w+|\s*[^\w\s]|\s+")
_FILLER = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et "
    "dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip ex ea "
    "commodo consequat"
).split()
#: Requests whose plan waits for their ``generate_stream`` call; the oldest are dropped beyond this (a plan
#: of a request that failed validation is never collected otherwise).
_MAX_PENDING_PLANS = 10_000
#: Server limits that ``POST /admin/config`` can change.
_LIMIT_FIELDS = ("max_concurrent_requests", "max_input_tokens", "max_total_tokens")


# -- tokenizer -------------------------------------------------------------------------------------------
def token_id(piece: str) -> int:
    """Deterministic id of a token's text (the same in every process), in ``[3, VOCAB_SIZE)``."""
    return 3 + zlib.crc32(piece.encode()) % (VOCAB_SIZE - 3)


def simple_tokenize(text: str) -> list[TokenSpan]:
    """Split ``text`` into words with leading whitespace, punctuation characters and trailing whitespace.

    The spans cover ``text`` without gaps, so ``"".join(s.text for s in spans) == text``.
    """
    return [
        TokenSpan(id=token_id(m.group()), text=m.group(), start=m.start(), stop=m.end())
        for m in _TOKEN_RE.finditer(text)
    ]


# -- fault rules -----------------------------------------------------------------------------------------
class _Rule(BaseModel):
    """When a rule applies (all given conditions must hold)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    next: int | None = Field(default=None, ge=1, description="fire on the next N matching requests only")
    requests: tuple[int, int] | None = Field(default=None, description="request numbers i..j (from 1)")
    window_s: float | None = Field(default=None, gt=0, description="seconds after the schedule was set")
    probability: float | None = Field(default=None, ge=0, le=1)
    seed: int = 0
    message: str | None = None

    @model_validator(mode="after")
    def _check_requests(self) -> _Rule:
        if self.requests is not None and not 1 <= self.requests[0] <= self.requests[1]:
            raise ValueError("requests must be [i, j] with 1 <= i <= j")
        return self


class OverloadedRule(_Rule):
    """HTTP 429 "overloaded"."""

    kind: Literal["overloaded"]


class LoadingRule(_Rule):
    """HTTP 503 "loading" with ``estimated_time`` (seconds)."""

    kind: Literal["loading"]
    estimated_time: float = Field(default=20.0, ge=0)


class ValidationRule(_Rule):
    """HTTP 422 "validation"."""

    kind: Literal["validation"]


class HangRule(_Rule):
    """Send nothing for ``hang_s`` seconds, then serve the request."""

    kind: Literal["hang"]
    hang_s: float = Field(default=30.0, gt=0)


class StreamErrorRule(_Rule):
    """Fail with a "generation" error after ``after_tokens`` tokens."""

    kind: Literal["stream_error"]
    after_tokens: int = Field(default=2, ge=0)


class SlowRule(_Rule):
    """Generate with ``per_token_ms`` (and ``ttft_ms`` if given) instead of the configured times."""

    kind: Literal["slow"]
    per_token_ms: float = Field(ge=0)
    ttft_ms: float | None = Field(default=None, ge=0)


FaultRule = Annotated[
    OverloadedRule | LoadingRule | ValidationRule | HangRule | StreamErrorRule | SlowRule,
    Field(discriminator="kind"),
]
_RULES_ADAPTER: TypeAdapter[list[FaultRule]] = TypeAdapter(list[FaultRule])


def parse_fault_rules(data: Any) -> list[FaultRule]:
    """Validate a fault schedule.

    Args:
        data: A list of rule objects, ``{"rules": [...]}``, or a ``str``: JSON text of either, or the path
            of a file holding it. "" or None: no rules.

    Returns:
        The rules, in order.

    Raises:
        ValueError: invalid JSON or an invalid rule (pydantic's ``ValidationError`` is a ``ValueError``).
    """
    if data is None or data == "":
        return []
    if isinstance(data, str):
        text = data.strip()
        if not text.startswith(("[", "{")):
            text = Path(text).read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"fault schedule is not valid JSON: {exc}") from None
    if isinstance(data, Mapping):
        data = data.get("rules", [])
    return _RULES_ADAPTER.validate_python(data)


class FaultSchedule:
    """The rules plus their state (request numbering, time window, remaining firings, random generators).

    Args:
        rules: Rules in priority order.
        clock: Monotonic clock in seconds (injectable for tests).
    """

    def __init__(self, rules: Sequence[FaultRule], clock: Callable[[], float] = time.monotonic) -> None:
        self.rules = list(rules)
        self._clock = clock
        self._since = clock()
        self._count = 0
        self._remaining = [r.next for r in self.rules]
        self._rngs = [random.Random(r.seed) for r in self.rules]

    def decide(self) -> FaultRule | None:
        """Number the next request and return the first rule that fires for it, or None."""
        self._count += 1
        n = self._count
        elapsed = self._clock() - self._since
        for i, rule in enumerate(self.rules):
            if rule.requests is not None and not rule.requests[0] <= n <= rule.requests[1]:
                continue
            if rule.window_s is not None and elapsed > rule.window_s:
                continue
            remaining = self._remaining[i]
            if remaining is not None and remaining <= 0:
                continue
            if rule.probability is not None and self._rngs[i].random() >= rule.probability:
                continue
            if remaining is not None:
                self._remaining[i] = remaining - 1
            return rule
        return None

    def dump(self) -> list[dict[str, Any]]:
        """The rules as JSON-ready dicts (defaults included)."""
        return [r.model_dump() for r in self.rules]


# -- settings, stats, batch slots ------------------------------------------------------------------------
@dataclass
class SimulatedConfig:
    """Settings of the simulated engine (changeable at runtime through ``POST /admin/config``).

    Attributes:
        ttft_ms: Time to first token once a request is in the batch, milliseconds.
        per_token_ms: Time per further output token, milliseconds.
        capacity: Requests generating at the same time (the batch); more wait in a FIFO queue.
    """

    ttft_ms: float = 50.0
    per_token_ms: float = 10.0
    capacity: int = 8

    def __post_init__(self) -> None:
        if self.ttft_ms < 0 or self.per_token_ms < 0 or self.capacity < 1:
            raise ValueError(f"invalid simulated engine settings: {self}")


class ConfigUpdate(BaseModel):
    """Body of ``POST /admin/config`` (only the given fields change)."""

    model_config = ConfigDict(extra="forbid")

    ttft_ms: float | None = Field(default=None, ge=0)
    per_token_ms: float | None = Field(default=None, ge=0)
    capacity: int | None = Field(default=None, ge=1)
    max_concurrent_requests: int | None = Field(default=None, ge=1)
    max_input_tokens: int | None = Field(default=None, ge=1)
    max_total_tokens: int | None = Field(default=None, ge=1)


@dataclass
class SimulatedStats:
    """Counters of ``GET /admin/stats`` (see the module docstring for their meaning)."""

    requests_seen: int = 0
    hanging: int = 0
    queued: int = 0
    generating: int = 0
    max_concurrent: int = 0
    max_queued: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    tokens_generated: int = 0
    faults: dict[str, int] = field(default_factory=dict)

    def reset(self) -> None:
        """Zero the counters; keep the gauges (hanging, queued, generating) and restart the maxima from them."""
        fresh = SimulatedStats(hanging=self.hanging, queued=self.queued, generating=self.generating)
        fresh.max_concurrent, fresh.max_queued = self.generating, self.queued
        self.__dict__.update(fresh.__dict__)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready counters, with ``in_flight`` = hanging + queued + generating."""
        d = asdict(self)
        d["in_flight"] = self.hanging + self.queued + self.generating
        return d


class _BatchSlots:
    """``capacity`` generation slots handed out in arrival order (a FIFO semaphore whose size can change)."""

    def __init__(self, capacity: int, stats: SimulatedStats) -> None:
        self.capacity = capacity
        self._stats = stats
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        """Wait for a slot (cancellation-safe: a slot granted to a cancelled waiter is given back)."""
        st = self._stats
        if not self._waiters and st.generating < self.capacity:
            self._take()
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        st.queued += 1
        st.max_queued = max(st.max_queued, st.queued)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():  # granted just before the cancellation landed
                self.release()
            else:  # still waiting: wake() skips (and may already have dropped) a cancelled future
                if fut in self._waiters:
                    self._waiters.remove(fut)
                st.queued -= 1
            raise

    def release(self) -> None:
        """Give a slot back and admit waiting requests."""
        self._stats.generating -= 1
        self.wake()

    def set_capacity(self, capacity: int) -> None:
        """Change the batch size; a larger one admits waiting requests at once."""
        self.capacity = capacity
        self.wake()

    def wake(self) -> None:
        """Hand free slots to the oldest waiters."""
        while self._waiters and self._stats.generating < self.capacity:
            fut = self._waiters.popleft()
            if fut.done():  # its waiter was cancelled; acquire() does the bookkeeping
                continue
            self._stats.queued -= 1
            self._take()
            fut.set_result(None)

    def _take(self) -> None:
        st = self._stats
        st.generating += 1
        st.max_concurrent = max(st.max_concurrent, st.generating)


@dataclass(frozen=True)
class _Plan:
    """What the fault schedule decided for one request's generation."""

    ttft_ms: float | None = None
    per_token_ms: float | None = None
    error_after: int | None = None
    message: str = ""


# -- the engine ------------------------------------------------------------------------------------------
class SimulatedEngine(Engine):
    """Filler-token generation with simulated timing, batching and faults.

    Args:
        config: Initial time to first token, time per token (ms) and capacity (requests).
        rules: Initial fault schedule.
        max_position_embeddings: Context length reported in ``/info`` (tokens).
    """

    def __init__(
        self,
        config: SimulatedConfig | None = None,
        rules: Sequence[FaultRule] = (),
        *,
        max_position_embeddings: int = 1 << 20,
    ) -> None:
        self.config = config or SimulatedConfig()
        self.stats = SimulatedStats()
        self.schedule = FaultSchedule(rules)
        self._slots = _BatchSlots(self.config.capacity, self.stats)
        self._plans: collections.OrderedDict[str, _Plan] = collections.OrderedDict()
        self._info = EngineInfo(
            model_id=SIMULATED_MODEL_ID,
            model_sha=None,
            model_dtype="simulated",
            model_device_type="cpu",
            max_position_embeddings=max_position_embeddings,
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SimulatedEngine:
        """Build the engine from ``python -m devstack.tgi`` options (``--ttft-ms``, ``--per-token-ms``,
        ``--capacity``, ``--faults``).

        Raises:
            ValueError: invalid settings or fault schedule.
        """
        config = SimulatedConfig(
            ttft_ms=getattr(args, "ttft_ms", 50.0),
            per_token_ms=getattr(args, "per_token_ms", 10.0),
            capacity=getattr(args, "capacity", 8),
        )
        rules = parse_fault_rules(getattr(args, "faults", "") or "")
        return cls(config, rules, max_position_embeddings=getattr(args, "max_total_tokens", 1 << 20))

    # -- Engine interface ----------------------------------------------------------------------------
    def info(self) -> EngineInfo:
        """The simulated model's description."""
        return self._info

    def tokenize(self, text: str) -> list[TokenSpan]:
        """See :func:`simple_tokenize`."""
        return simple_tokenize(text)

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` (without building spans)."""
        return sum(1 for _ in _TOKEN_RE.finditer(text))

    def apply_chat_template(self, messages: Sequence[Mapping[str, str]]) -> str:
        """``<|role|>\\ncontent\\n`` per message, then ``<|assistant|>\\n``."""
        return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"

    async def start(self) -> None:
        """Nothing to load; log the settings."""
        logger.info(
            "simulated engine ttft_ms=%s per_token_ms=%s capacity=%s fault_rules=%s",
            self.config.ttft_ms,
            self.config.per_token_ms,
            self.config.capacity,
            len(self.schedule.rules),
        )

    async def on_request(self, request_id: str) -> None:
        """Count the request and apply the fault schedule's decision for it.

        Raises:
            EngineRejectedError: 429, 503 or 422 when an "overloaded", "loading" or "validation" rule fires.
        """
        self.stats.requests_seen += 1
        rule = self.schedule.decide()
        if rule is None:
            return
        self.stats.faults[rule.kind] = self.stats.faults.get(rule.kind, 0) + 1
        logger.debug("fault injected kind=%s request_id=%s", rule.kind, request_id)
        if isinstance(rule, OverloadedRule):
            raise EngineRejectedError(429, "overloaded", rule.message or "Model is overloaded")
        if isinstance(rule, LoadingRule):
            raise EngineRejectedError(
                503, "loading", rule.message or "Model is loading", {"estimated_time": rule.estimated_time}
            )
        if isinstance(rule, ValidationRule):
            raise EngineRejectedError(422, "validation", f"Input validation error: {rule.message or 'rejected'}")
        if isinstance(rule, HangRule):
            self.stats.hanging += 1
            try:
                await asyncio.sleep(rule.hang_s)
            finally:
                self.stats.hanging -= 1
            return
        if isinstance(rule, StreamErrorRule):
            plan = _Plan(error_after=rule.after_tokens, message=rule.message or "Simulated generation error")
        else:
            plan = _Plan(ttft_ms=rule.ttft_ms, per_token_ms=rule.per_token_ms)
        self._plans[request_id] = plan
        while len(self._plans) > _MAX_PENDING_PLANS:
            self._plans.popitem(last=False)

    async def generate_stream(self, prompt: str, params: GenerationParams) -> AsyncIterator[TokenEvent | FinishEvent]:
        """Wait for a batch slot, then yield ``max_new_tokens`` filler tokens on the simulated schedule.

        Token i (from 0) is due ``ttft_ms + i * per_token_ms`` after the request enters the batch (deadlines,
        so sleeping overhead does not accumulate).

        Raises:
            EngineError: a "stream_error" rule fired for this request.
        """
        plan = self._plans.pop(params.request_id, None) if params.request_id else None
        plan = plan or _Plan()
        cfg = self.config
        ttft_s = (plan.ttft_ms if plan.ttft_ms is not None else cfg.ttft_ms) / 1000
        tpot_s = (plan.per_token_ms if plan.per_token_ms is not None else cfg.per_token_ms) / 1000
        seed = params.seed
        if seed is None and params.do_sample:
            seed = random.getrandbits(63)
        start = zlib.crc32(prompt.encode()) ^ (seed or 0)
        loop = asyncio.get_running_loop()
        outcome = "cancelled"
        try:
            await self._slots.acquire()
        except BaseException:
            self.stats.cancelled += 1
            raise
        try:
            t0 = loop.time()
            for i in range(params.max_new_tokens):
                delay = t0 + ttft_s + i * tpot_s - loop.time()
                await asyncio.sleep(max(0.0, delay))
                if i == plan.error_after:
                    outcome = "failed"
                    raise EngineError(plan.message)
                word = " " + _FILLER[(start + i) % len(_FILLER)]
                self.stats.tokens_generated += 1
                yield TokenEvent(id=token_id(word), text=word, logprob=-1.0)
            if plan.error_after is not None:
                outcome = "failed"
                raise EngineError(plan.message)
            outcome = "completed"
            yield FinishEvent(finish_reason="length", seed=seed if params.do_sample else None)
        finally:
            self._slots.release()
            setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)

    # -- runtime control -----------------------------------------------------------------------------
    def set_faults(self, rules: Sequence[FaultRule]) -> None:
        """Replace the fault schedule (request numbering and time windows restart)."""
        self.schedule = FaultSchedule(rules)
        logger.info("fault schedule set rules=%s", len(rules))

    def update_config(self, ttft_ms: float | None, per_token_ms: float | None, capacity: int | None) -> None:
        """Change the settings given (not None); running requests keep their timing."""
        cfg = self.config
        self.config = SimulatedConfig(
            ttft_ms=cfg.ttft_ms if ttft_ms is None else ttft_ms,
            per_token_ms=cfg.per_token_ms if per_token_ms is None else per_token_ms,
            capacity=cfg.capacity if capacity is None else capacity,
        )
        self._slots.set_capacity(self.config.capacity)
        logger.info(
            "simulated engine config ttft_ms=%s per_token_ms=%s capacity=%s",
            self.config.ttft_ms,
            self.config.per_token_ms,
            self.config.capacity,
        )

    def admin_router(self) -> APIRouter:
        """The ``/admin/*`` routes (see the module docstring)."""
        router = APIRouter(prefix="/admin", tags=["admin (dev server only)"])

        def limits_of(request: Request) -> dict[str, int]:
            server = request.app.state.server
            return {k: getattr(server.limits, k) for k in _LIMIT_FIELDS}

        def invalid(exc: Exception) -> JSONResponse:
            if isinstance(exc, ValidationError):
                msg = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            else:
                msg = str(exc)
            return JSONResponse(status_code=422, content={"error": msg, "error_type": "validation"})

        @router.get("/faults")
        async def get_faults() -> dict[str, Any]:
            return {"rules": self.schedule.dump()}

        @router.post("/faults", response_model=None)
        async def set_faults(request: Request) -> dict[str, Any] | JSONResponse:
            try:
                rules = parse_fault_rules(await request.json())
            except ValueError as exc:
                return invalid(exc)
            self.set_faults(rules)
            return {"rules": self.schedule.dump()}

        @router.delete("/faults")
        async def clear_faults() -> dict[str, Any]:
            self.set_faults([])
            return {"rules": []}

        @router.get("/config")
        async def get_config(request: Request) -> dict[str, Any]:
            return {**asdict(self.config), **limits_of(request)}

        @router.post("/config", response_model=None)
        async def set_config(request: Request) -> dict[str, Any] | JSONResponse:
            try:
                upd = ConfigUpdate.model_validate(await request.json())
                limit_changes = {k: v for k, v in upd.model_dump(include=set(_LIMIT_FIELDS)).items() if v is not None}
                if limit_changes:
                    request.app.state.server.update_limits(**limit_changes)
            except ValueError as exc:
                return invalid(exc)
            self.update_config(upd.ttft_ms, upd.per_token_ms, upd.capacity)
            return {**asdict(self.config), **limits_of(request)}

        @router.get("/stats")
        async def get_stats(request: Request) -> dict[str, Any]:
            return {**self.stats.as_dict(), "server_in_flight": request.app.state.server.in_flight}

        @router.delete("/stats")
        async def reset_stats(request: Request) -> dict[str, Any]:
            self.stats.reset()
            return {**self.stats.as_dict(), "server_in_flight": request.app.state.server.in_flight}

        return router
