"""The stream runner: one place that turns what stages return into outputs, error answers and dead letters.

A *stage* is a class of its inputs and injected adapters that knows no transport: the retriever's
``retrieve(requests) -> [Prompt | Failure]``, the generator's ``generate(prompts) -> [Response | Failure]``. The
runner calls a *chain* of stages for a micro-batch of consumed records and decides everything else, once
(quix-streams' ``_process_message`` + ``error_callbacks.py`` are the model):

1. **Decode** each record into the input model (``Request`` or ``Prompt``); a record that does not decode is
   dead-lettered with the reason, if the error hook allows it (:data:`ErrorHook`; raising is the default). When
   its request id can still be read (the body's ``request_id``, else the header), it is also answered at once with
   a ``rejected`` Response carrying the validation message, on the responses topic only (a reply topic named by
   an invalid message is not trusted: it may not exist), so a client waiting on that id is not left to its
   timeout. A rejected answer is not stored: the same bytes are rejected again.
2. **Effectively-once** (with an answer store): a request id answered before is re-emitted from the store, and a
   copy of a request being answered right now (same request id twice in the topic) waits for that answer; no
   stage runs for either.
3. **Expiry**, before each stage: an input past its deadline (``Request.deadline`` or the ``deadline`` header) is
   answered ``expired`` without running the stage.
4. **The stages**, in order: a Prompt returned by a stage that has a successor is handed to it in memory (the
   monolith's retriever → generator); the batch is retried as a whole on a retryable error (the ``handler``
   retry policy), then split so that one bad input cannot take the others with it. An input that still fails
   alone goes to the error hook.
5. **Outputs**: a final Prompt goes to the prompts topic (refused when larger than the producer's
   ``message.max.bytes``: an error answer and a dead letter instead); a Response goes to the responses topic and,
   when the request names another ``reply_topic``, a copy there; to the request's ``reply_partition`` (of the
   reply topic, else of the responses topic) when it names one, a gateway replica's own partition; a
   :class:`Failure` becomes an error Response (the stage's own, or one the runner builds) plus a dead letter when
   the failure says so.
6. **Remember and record**: final answers are written to the answer store (not those of a retryable failure, so
   a later redelivery tries again); every event (request, prompts, response, dead letters) goes to the event
   recorder when there is one (the monolith's in-process monitor stage).

The worker loop stores an input's offset only after all its outputs are delivered, so everything above is
at-least-once, and effectively-once for users through the answer store.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from workers.adapters.interfaces import AnswerStore
from workers.contracts.errors import MessageError, PromptTooLargeError, RetryableError
from workers.contracts.messages import (
    DeadLetter,
    ErrorInfo,
    Prompt,
    Request,
    Response,
    ResponseStatus,
    request_deadline,
)
from workers.contracts.serde import decode, encode
from workers.retry import RetryPolicy
from workers.settings import Settings
from workers.stream.metrics import RunnerMetrics, build_runner_metrics
from workers.stream.records import (
    Incoming,
    Output,
    dead_letter_of,
    dead_letter_output,
    error_class_of,
    output_headers,
    readable_request_id,
)
from workers.stream.results import Failure, Stage, StageResult

log = logging.getLogger(__name__)

#: A model the runner records: the input, prompts handed between stages, the answer, dead letters.
Event = Request | Prompt | Response | DeadLetter


class EventRecorder(Protocol):
    """Records the events of inputs (the monolith's in-process monitor stage)."""

    async def record_events(self, events: Sequence[tuple[Event, Incoming]]) -> None:
        """Record ``(event, input record)`` pairs; must not raise (a failure is logged and counted)."""
        ...


#: Decides what happens to an input that failed for good (bad message, stage error after retries): ``True`` =
#: answer it with an error (when its request id is known), dead-letter it and go on; ``False`` = raise, which stops
#: the worker without committing the input (it is processed again after the restart).
ErrorHook = Callable[[BaseException, Incoming, str], bool]


def raise_errors(error: BaseException, incoming: Incoming, stage: str) -> bool:
    """The default :data:`ErrorHook`: raise (never skip an input silently)."""
    return False


def dead_letter_errors(error: BaseException, incoming: Incoming, stage: str) -> bool:
    """The workers' :data:`ErrorHook`: dead-letter the input with the reason and go on."""
    log.error(
        "input failed stage=%s topic=%s partition=%d offset=%d error_class=%s: %s; dead-lettering it",
        stage,
        incoming.topic,
        incoming.partition,
        incoming.offset,
        error_class_of(error),
        error,
    )
    return True


@dataclass(frozen=True)
class Routes:
    """Where the runner's outputs go.

    Attributes:
        prompts: the prompts topic (final Prompts).
        responses: the responses topic (answers and error answers).
        dead_letter: the dead-letter topic.
        max_message_bytes: largest value the producer accepts (``kafka.message_max_bytes``), bytes.
    """

    prompts: str
    responses: str
    dead_letter: str
    max_message_bytes: int = 4_194_304

    @classmethod
    def from_settings(cls, settings: Settings) -> Routes:
        """The routes of the settings' topic set (prefix applied) and producer limit."""
        t = settings.topics
        return cls(t.name("prompts"), t.name("responses"), t.name("dead_letter"), settings.kafka.message_max_bytes)


def utcnow() -> datetime:
    """The current time, UTC (the runner's default clock)."""
    return datetime.now(UTC)


@dataclass
class _Item:
    """One decoded input travelling through the chain."""

    inc: Incoming
    value: Request | Prompt
    request: Request
    out: list[Output]
    future: asyncio.Future[Response] | None = None
    response: Response | None = field(default=None)


class StreamRunner:
    """Runs a chain of stages for micro-batches of records (see the module docstring).

    Args:
        stages: the chain; the first takes ``input_model``, each next one takes the Prompts of the one before.
        input_model: ``Request`` (retriever, monolith) or ``Prompt`` (generator).
        routes: output topics and the producer's message size limit.
        retry: retry policy of one stage call for a whole batch (``handler``).
        on_error: what to do with an input that failed for good (default: raise).
        answers: finished answers by request id; enables step 2 and remembering answers (``None``: off).
        store_retry: retry policy of one answer-store call (default: 6 attempts, 0.2 s doubling up to 2 s).
        recorder: records every event (``None``: nothing recorded here; the monitor reads the topics).
        metrics: the runner's metrics (a private registry if omitted).
        clock: the current time (UTC); tests pass a fixed one.
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        *,
        input_model: type[Request] | type[Prompt],
        routes: Routes,
        retry: RetryPolicy,
        on_error: ErrorHook = raise_errors,
        answers: AnswerStore | None = None,
        store_retry: RetryPolicy | None = None,
        recorder: EventRecorder | None = None,
        metrics: RunnerMetrics | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if not stages:
            raise ValueError("a runner needs at least one stage")
        self.stages = list(stages)
        self.input_model = input_model
        self.routes = routes
        self.retry = retry
        self.on_error = on_error
        self.answers = answers
        self.store_retry = store_retry or RetryPolicy(6, 0.2, 2.0)
        self.recorder = recorder
        self.metrics = metrics or build_runner_metrics()
        self.clock = clock
        #: Checked between retries: once True (the worker is stopping) a failing batch is not retried again.
        self.stopping: Callable[[], bool] = lambda: False
        self._in_progress: dict[uuid.UUID, asyncio.Future[Response]] = {}

    @property
    def entry(self) -> str:
        """Name of the first stage (the one that reads the input records)."""
        return self.stages[0].name

    async def handle(self, batch: list[Incoming]) -> list[list[Output]]:
        """Process one micro-batch; returns one output list per input, in order.

        Raises:
            whatever the error hook chooses to raise (the default hook: any input that failed for good).
        """
        results: list[list[Output]] = [[] for _ in batch]
        events: list[tuple[Event, Incoming]] = []
        items: list[_Item] = []
        for i, inc in enumerate(batch):
            try:
                value = decode(inc.value, self.input_model)
            except MessageError as exc:
                self.metrics.errors.labels(self.entry, exc.error_class).inc()
                if not self.on_error(exc, inc, self.entry):
                    raise
                rid = readable_request_id(inc)
                if rid is not None:
                    results[i] = [self._reject(inc, rid, exc, events)]
                letter = dead_letter_of(inc, stage=self.entry, error=exc, request_id=rid)
                results[i].append(dead_letter_output(inc, letter, self.routes.dead_letter))
                events.append((letter, inc))
                continue
            request = value if isinstance(value, Request) else value.request
            items.append(_Item(inc, value, request, results[i]))
            events.append((value, inc))
        owned: list[_Item] = []
        waiting: list[tuple[_Item, asyncio.Future[Response]]] = []
        try:
            if self.answers is not None:
                items, owned, waiting = await self._effectively_once(items, events)
            await self._run_chain(items, events)
            await self._remember([it for it in owned if it.response is not None])
            for item in owned:
                if item.future is not None and not item.future.done() and item.response is not None:
                    item.future.set_result(item.response)
            for item, fut in waiting:  # copies of a request answered meanwhile: the same answer, no work
                resp = await asyncio.shield(fut)
                self.metrics.reemitted.inc()
                self._answer(item, resp, events, remember=False)
        finally:
            for item in owned:
                self._in_progress.pop(item.request.request_id, None)
                if item.future is not None and not item.future.done():
                    item.future.set_exception(RuntimeError(f"request {item.request.request_id} was not answered"))
                    item.future.exception()  # retrieved: a waiter re-raises it, nobody logs "never retrieved"
        if self.recorder is not None and events:
            await self.recorder.record_events(events)
        return results

    # -- effectively once

    async def _effectively_once(
        self, items: list[_Item], events: list[tuple[Event, Incoming]]
    ) -> tuple[list[_Item], list[_Item], list[tuple[_Item, asyncio.Future[Response]]]]:
        """Split inputs into those to process (registered as in progress), re-emitted ones and waiting copies."""
        loop = asyncio.get_running_loop()
        owned: list[_Item] = []
        waiting: list[tuple[_Item, asyncio.Future[Response]]] = []
        for item in items:
            rid = item.request.request_id
            running = self._in_progress.get(rid)
            if running is not None:
                waiting.append((item, running))
                continue
            item.future = loop.create_future()  # registered before the first await: a copy arriving meanwhile finds it
            self._in_progress[rid] = item.future
            owned.append(item)
        stored = await asyncio.gather(*(self._lookup(item.request.request_id) for item in owned))
        todo: list[_Item] = []
        for item, resp in zip(owned, stored, strict=True):
            if resp is None:
                todo.append(item)
                continue
            self.metrics.reemitted.inc()
            log.info("re-emitting the stored answer request_id=%s status=%s", resp.request_id, resp.status)
            self._answer(item, resp, events, remember=False)
        return todo, owned, waiting

    async def _lookup(self, request_id: uuid.UUID) -> Response | None:
        assert self.answers is not None
        store = self.answers
        try:
            return await self.store_retry.call(lambda: store.get(request_id))
        except RetryableError as exc:  # store away: process anyway (at-least-once), never block forever
            self.metrics.store_errors.inc()
            log.warning("answer store unavailable, processing without the lookup: %s", exc)
            return None

    async def _remember(self, items: list[_Item]) -> None:
        if self.answers is None or not items:
            return
        store = self.answers

        async def put(resp: Response) -> None:
            try:
                await self.store_retry.call(lambda: store.put(resp))
            except RetryableError as exc:
                self.metrics.store_errors.inc()
                log.warning("answer store unavailable, answer not remembered request_id=%s: %s", resp.request_id, exc)

        await asyncio.gather(*(put(it.response) for it in items if it.response is not None))

    # -- the chain

    async def _run_chain(self, items: list[_Item], events: list[tuple[Event, Incoming]]) -> None:
        for k, stage in enumerate(self.stages):
            items = self._expire(items, stage.name, events)
            if not items:
                return
            outcomes = await self._run_stage(stage, items)
            follow: list[_Item] = []
            for item, outcome in zip(items, outcomes, strict=True):
                result: StageResult
                if isinstance(outcome, BaseException):
                    if not self.on_error(outcome, item.inc, stage.name):
                        raise outcome
                    result = Failure(outcome)
                else:
                    result = outcome
                if isinstance(result, Prompt):
                    result = self._stamp(item, result)
                    if k + 1 < len(self.stages):
                        events.append((result, item.inc))
                        item.value = result
                        follow.append(item)
                        continue
                    self._prompt_out(item, result, stage.name, events)
                elif isinstance(result, Response):
                    self._answer(item, result, events, remember=True)
                else:
                    self._fail(item, result, stage.name, events)
            items = follow

    def _expire(self, items: list[_Item], stage: str, events: list[tuple[Event, Incoming]]) -> list[_Item]:
        now = self.clock()
        keep: list[_Item] = []
        for item in items:
            deadline = request_deadline(item.request, item.inc.headers)
            if deadline is None or now <= deadline:
                keep.append(item)
                continue
            self.metrics.expired.labels(stage).inc()
            info = ErrorInfo(
                error_class="expired",
                message=f"deadline {deadline.isoformat()} passed before the {stage} stage",
                stage=stage,
            )
            self._answer(item, self._error_response(item, "expired", info), events, remember=True)
        return keep

    async def _run_stage(self, stage: Stage, items: list[_Item]) -> list[StageResult | BaseException]:
        """One stage call for ``items``: retried as a batch, then split; an input failing alone yields its error."""

        async def call() -> list[StageResult]:
            out = list(await stage.run([item.value for item in items]))
            if len(out) != len(items):
                raise RuntimeError(f"stage {stage.name} returned {len(out)} results for {len(items)} inputs")
            return out

        def on_retry(exc: BaseException, attempt: int, sleep_s: float) -> None:
            self.metrics.errors.labels(stage.name, error_class_of(exc)).inc()
            log.warning("stage %s failed batch=%d attempt=%d, retrying in %.1f s: %s",
                        stage.name, len(items), attempt, sleep_s, exc)  # fmt: skip

        try:
            return list(await self.retry.call(call, on_retry=on_retry, stop=self.stopping))
        except Exception as exc:
            self.metrics.errors.labels(stage.name, error_class_of(exc)).inc()
            if len(items) == 1:
                return [exc]
            log.warning("stage %s failed batch=%d: %s; running the inputs one by one", stage.name, len(items), exc)
            out: list[StageResult | BaseException] = []
            for item in items:
                out.extend(await self._run_stage(stage, [item]))
            return out

    # -- outputs

    def _stamp(self, item: _Item, prompt: Prompt) -> Prompt:
        """Name the replay run (header ``replay_run``) in the prompt's provenance."""
        run = item.inc.headers.get("replay_run") or None
        if run == prompt.provenance.run_id:
            return prompt
        return prompt.model_copy(update={"provenance": prompt.provenance.model_copy(update={"run_id": run})})

    def _prompt_out(self, item: _Item, prompt: Prompt, stage: str, events: list[tuple[Event, Incoming]]) -> None:
        value = encode(prompt)
        if len(value) > self.routes.max_message_bytes:
            too_large = PromptTooLargeError(
                f"prompt of {len(value)} bytes exceeds the producer's message.max.bytes {self.routes.max_message_bytes}"
            )
            self._fail(item, Failure(too_large), stage, events)
            return
        rid = str(item.request.request_id)
        events.append((prompt, item.inc))
        item.out.append(
            Output(self.routes.prompts, value, item.inc.key or rid, output_headers(item.inc, request_id=rid))
        )

    def _answer(self, item: _Item, resp: Response, events: list[tuple[Event, Incoming]], *, remember: bool) -> None:
        """Emit a Response (responses topic, reply copy); keep it for the answer store when ``remember``."""
        self.metrics.responses.labels(resp.status).inc()
        if remember:
            item.response = resp
        elif item.future is not None and not item.future.done():
            item.future.set_result(resp)  # re-emitted: settle waiting copies, nothing to store
        events.append((resp, item.inc))
        value = encode(resp)
        rid = str(item.request.request_id)
        key = item.inc.key or rid
        headers = output_headers(item.inc, request_id=rid)
        reply = item.request.reply_topic
        partition = item.request.reply_partition
        if reply and reply != self.routes.responses:
            item.out.append(Output(self.routes.responses, value, key, headers))
            item.out.append(Output(reply, value, key, headers, partition))
        else:  # the asking gateway replica's partition of the responses topic, when it names one
            item.out.append(Output(self.routes.responses, value, key, headers, partition))

    def _reject(
        self, inc: Incoming, request_id: uuid.UUID, error: MessageError, events: list[tuple[Event, Incoming]]
    ) -> Output:
        """The ``rejected`` answer to a message that failed validation (responses topic only)."""
        resp = Response(
            request_id=request_id,
            created_at=self.clock(),
            status="rejected",
            answer=None,
            error=ErrorInfo(error_class=error.error_class, message=str(error)[:2000], stage=self.entry),
            attempts=0,
        )
        self.metrics.responses.labels(resp.status).inc()
        events.append((resp, inc))
        rid = str(request_id)
        return Output(self.routes.responses, encode(resp), inc.key or rid, output_headers(inc, request_id=rid))

    def _fail(self, item: _Item, failure: Failure, stage: str, events: list[tuple[Event, Incoming]]) -> None:
        error_class = error_class_of(failure.error)
        self.metrics.errors.labels(stage, error_class).inc()
        resp = failure.response or self._error_response(
            item, failure.status, ErrorInfo(error_class=error_class, message=str(failure.error)[:2000], stage=stage)
        )
        # A retryable failure's answer is not final: a later redelivery (a replay, the dlq) tries again.
        final = not isinstance(failure.error, RetryableError) and resp.status != "model_unavailable"
        self._answer(item, resp, events, remember=final)
        if failure.dead_letter:
            letter = dead_letter_of(item.inc, stage=stage, error=failure.error, request_id=item.request.request_id)
            events.append((letter, item.inc))
            item.out.append(dead_letter_output(item.inc, letter, self.routes.dead_letter))

    def _error_response(self, item: _Item, status: ResponseStatus, error: ErrorInfo, attempts: int = 0) -> Response:
        """An error answer built by the runner: the input prompt's timings and provenance when it was a Prompt."""
        now = self.clock()
        prompt = item.value if isinstance(item.value, Prompt) else None
        timings = dict(prompt.timings_ms) if prompt is not None else {}
        timings["end_to_end_ms"] = max(0.0, (now - item.request.created_at).total_seconds() * 1000.0)
        return Response(
            request_id=item.request.request_id,
            created_at=now,
            status=status,
            answer=None,
            error=error,
            attempts=attempts,
            timings_ms=timings,
            provenance=prompt.provenance if prompt is not None else None,
        )
