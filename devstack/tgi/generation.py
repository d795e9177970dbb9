"""What every caller of an :class:`Engine` does the same way: limits, validation, admission, stop sequences.

Two callers share this module: the HTTP layer (:mod:`devstack.tgi.server`, TGI's API) and the in-process
adapter of the workers (``workers.adapters.llm_engine.EngineLLM``). Both therefore accept the same requests,
reject the same ones with the same errors, and end generation at the same stop sequences. The rules follow
TGI's router (``router/src/validation.rs``): ``max_input_tokens``, ``max_total_tokens``, a default
``max_new_tokens`` capped by what the total leaves, sampling implied by the warpers, at most
``max_stop_sequences`` stop sequences, and 429 "overloaded" above ``max_concurrent_requests``.

Nothing here speaks HTTP: errors are :class:`TGIError` (status, TGI ``error_type``, message), which the server
answers as TGI's JSON body and the adapter translates into ragstream's error classes.
"""

from __future__ import annotations

import argparse
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass

from devstack.tgi.busy import BusyClock
from devstack.tgi.engine import Engine, EngineError, FinishEvent, FinishReason, GenerationParams, TokenEvent
from devstack.tgi.schemas import GenerateParameters
from workers.adapters.llm_text import cut_at_stop as cut_at_stop  # the one stop-text rule, shared with the workers


@dataclass(frozen=True)
class ServerLimits:
    """Limits enforced on every request and reported in ``/info`` (token counts are in model tokens).

    Attributes:
        max_input_tokens: Longest prompt accepted.
        max_total_tokens: Prompt plus ``max_new_tokens`` may not exceed this.
        max_concurrent_requests: Requests in flight above this get 429 "overloaded".
        max_stop_sequences: Stop sequences per request.
        max_best_of: Largest ``best_of`` (1: no best-of sampling).
        default_max_new_tokens: Used when a request gives none (capped by what ``max_total_tokens`` leaves).
        default_repetition_penalty: Used when a request gives none (1.0 = off; the chat route has no such
            field in OpenAI's API, so this is how a small model that loops gets a mild penalty).
    """

    max_input_tokens: int = 3072
    max_total_tokens: int = 4096
    max_concurrent_requests: int = 16
    max_stop_sequences: int = 4
    max_best_of: int = 1
    default_max_new_tokens: int = 100
    default_repetition_penalty: float = 1.0


def limits_from_args(args: argparse.Namespace) -> ServerLimits:
    """The limits given on the command line of ``python -m devstack.tgi`` (``--max-input-tokens`` ...).

    Args:
        args: Options parsed with ``devstack.tgi.__main__.build_parser()``.

    Returns:
        The limits.

    Raises:
        ValueError: ``--max-input-tokens`` is not less than ``--max-total-tokens``, or a limit is below 1.
    """
    limits = ServerLimits(
        max_input_tokens=args.max_input_tokens,
        max_total_tokens=args.max_total_tokens,
        max_concurrent_requests=args.max_concurrent_requests,
        max_stop_sequences=args.max_stop_sequences,
        default_max_new_tokens=args.default_max_new_tokens,
        default_repetition_penalty=getattr(args, "repetition_penalty", 1.0),
    )
    if min(limits.max_input_tokens, limits.max_concurrent_requests, limits.default_max_new_tokens) < 1:
        raise ValueError(f"limits must be >= 1: {limits}")
    if limits.default_repetition_penalty <= 0:
        raise ValueError("--repetition-penalty must be > 0")
    if limits.max_input_tokens >= limits.max_total_tokens:
        raise ValueError("--max-input-tokens must be less than --max-total-tokens")
    return limits


class TGIError(Exception):
    """A request refused or failed, described as TGI describes it.

    Args:
        status: HTTP status (422 validation, 429 overloaded, 500 generation).
        error_type: TGI error type ("validation", "overloaded", "generation", ...).
        message: Human-readable message.
    """

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message

    def body(self) -> dict[str, str]:
        """TGI's JSON error body: ``{"error": message, "error_type": error_type}``."""
        return {"error": self.message, "error_type": self.error_type}


def validation_error(msg: str) -> TGIError:
    """A 422 "validation" error with TGI's message prefix."""
    return TGIError(422, "validation", f"Input validation error: {msg}")


@dataclass(frozen=True)
class Prepared:
    """A validated request, ready for :func:`stream`.

    Attributes:
        prompt: The prompt the engine reads (after ``truncate``).
        input_length: Its length in model tokens.
        params: The engine's decoding parameters (``max_new_tokens`` resolved).
        stop: Non-empty stop sequences.
    """

    prompt: str
    input_length: int
    params: GenerationParams
    stop: tuple[str, ...]


def prepare(
    engine: Engine,
    limits: ServerLimits,
    prompt: str,
    p: GenerateParameters,
    *,
    chat: bool = False,
    request_id: str | None = None,
) -> Prepared:
    """Validate a request like TGI's validation workers and build the engine parameters.

    Args:
        engine: Counts (and, with ``truncate``, splits) the prompt's tokens.
        limits: The limits to enforce.
        prompt: The prompt text (a rendered chat template when ``chat``).
        p: TGI's generation parameters.
        chat: The prompt comes from chat messages (an empty prompt text is then allowed).
        request_id: The id given to :meth:`Engine.on_request`, passed on to the engine.

    Returns:
        The prepared request.

    Raises:
        TGIError: 422 "validation" for an invalid parameter or a prompt over the token limits.
    """
    lim = limits
    if not chat and prompt == "":
        raise validation_error("`inputs` cannot be empty")
    if p.best_of is not None and (p.best_of <= 0 or p.best_of > lim.max_best_of):
        raise validation_error(f"`best_of` must be > 0 and <= {lim.max_best_of}. Given: {p.best_of}")
    if p.temperature is not None and p.temperature < 0:
        raise validation_error("`temperature` must be strictly positive")
    if p.top_p is not None and not 0.0 < p.top_p <= 1.0:
        raise validation_error("`top_p` must be > 0.0 and <= 1.0")
    if p.top_k is not None and p.top_k < 0:
        raise validation_error("`top_k` must be strictly positive")
    if p.repetition_penalty is not None and p.repetition_penalty <= 0:
        raise validation_error("`repetition_penalty` must be strictly positive")
    if p.max_new_tokens is not None and p.max_new_tokens <= 0:
        raise validation_error("`max_new_tokens` must be strictly positive")
    if len(p.stop) > lim.max_stop_sequences:
        raise validation_error(f"`stop` supports up to {lim.max_stop_sequences} stop sequences. Given: {len(p.stop)}")
    if p.grammar is not None:
        raise validation_error("grammar (guided generation) is not supported by this server")
    if p.truncate is not None and not 0 < p.truncate <= lim.max_input_tokens:
        raise validation_error(f"`truncate` must be strictly positive and less than {lim.max_input_tokens}")
    if p.truncate is not None:
        spans = engine.tokenize(prompt)
        if len(spans) > p.truncate:
            prompt = prompt[spans[-p.truncate].start :]
    input_length = engine.count_tokens(prompt)
    if input_length > lim.max_input_tokens:
        raise validation_error(f"`inputs` must have less than {lim.max_input_tokens} tokens. Given: {input_length}")
    max_new = p.max_new_tokens
    if max_new is None:
        max_new = max(1, min(lim.default_max_new_tokens, lim.max_total_tokens - input_length))
    if input_length + max_new > lim.max_total_tokens:
        raise validation_error(
            f"`inputs` tokens + `max_new_tokens` must be <= {lim.max_total_tokens}. "
            f"Given: {input_length} `inputs` tokens and {max_new} `max_new_tokens`"
        )
    temperature = p.temperature
    sampling_warpers = (
        (temperature is not None and temperature not in (0.0, 1.0))
        or (p.top_p is not None and p.top_p < 1.0)
        or (p.top_k is not None and p.top_k > 0)
    )
    do_sample = (p.do_sample or sampling_warpers) and temperature != 0.0
    params = GenerationParams(
        max_new_tokens=max_new,
        do_sample=bool(do_sample),
        temperature=temperature if temperature else 1.0,
        top_p=p.top_p if p.top_p is not None else 1.0,
        top_k=p.top_k or 0,
        repetition_penalty=p.repetition_penalty or lim.default_repetition_penalty,
        seed=p.seed,
        request_id=request_id,
    )
    return Prepared(prompt=prompt, input_length=input_length, params=params, stop=tuple(s for s in p.stop if s))


def chat_parameters(
    max_new_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    seed: int | None,
    stop: Sequence[str],
) -> GenerateParameters:
    """TGI's parameters of a chat request (the Messages API has no ``top_k``, ``repetition_penalty`` ...).

    Args:
        max_new_tokens: Most tokens to generate; None: the server's default, capped by the total limit.
        temperature: Softmax temperature; 0 or None with no other warper: greedy.
        top_p: Nucleus mass in (0, 1].
        seed: Sampler seed.
        stop: Stop sequences.
    """
    return GenerateParameters(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        stop=list(stop),
        repetition_penalty=None,
    )


async def begin(engine: Engine) -> str:
    """Give an arriving generation request its id and show it to the engine (:meth:`Engine.on_request`).

    Returns:
        The request id (32 hex characters), to pass to :func:`prepare`.

    Raises:
        EngineRejectedError: the engine refuses the request (e.g. a simulated fault).
    """
    request_id = uuid.uuid4().hex
    await engine.on_request(request_id)
    return request_id


def render_chat(engine: Engine, messages: Sequence[Mapping[str, str]]) -> str:
    """Render chat messages with the engine's chat template (assistant cue included).

    Raises:
        TGIError: 422 "validation" when there are no messages.
    """
    if not messages:
        raise validation_error("`messages` cannot be empty")
    return engine.apply_chat_template(messages)


class Admission:
    """Requests in flight, refused above a limit (TGI's 429 "overloaded")."""

    def __init__(self) -> None:
        self.in_flight = 0

    def admit(self, limit: int) -> None:
        """Count one more request in flight; pair with :meth:`release`.

        Args:
            limit: ``max_concurrent_requests`` (read per request: the dev server may change it at runtime).

        Raises:
            TGIError: 429 "overloaded" when ``limit`` requests are already in flight.
        """
        if self.in_flight >= limit:
            raise TGIError(429, "overloaded", "Model is overloaded")
        self.in_flight += 1

    def release(self) -> None:
        """One request fewer in flight."""
        self.in_flight -= 1


def stop_hit(text: str, piece: str, stops: tuple[str, ...]) -> bool:
    """True when a stop sequence ends within the last ``piece`` appended to ``text``."""
    if not stops or not piece:
        return False
    window = text[-(max(len(s) for s in stops) + len(piece)) :]
    return any(s in window for s in stops)


async def stream(
    engine: Engine, prep: Prepared, busy: BusyClock | None = None
) -> AsyncGenerator[TokenEvent | FinishEvent, None]:
    """The engine's events for ``prep`` with stop sequences applied; the last event is always a FinishEvent.

    The token that completes a stop sequence is yielded, then ``FinishEvent("stop_sequence")`` and the engine's
    stream is closed. While the engine's stream is open, ``busy`` counts one generation in flight. Close this
    iterator (``contextlib.aclosing``) when leaving it early, so the engine stops too.

    Args:
        engine: A started engine.
        prep: The validated request.
        busy: The engine's busy clock, if any.

    Raises:
        EngineError: the engine failed, or ended without a finish event.
    """
    text = ""
    events = engine.generate_stream(prep.prompt, prep.params)
    with busy.running() if busy is not None else contextlib.nullcontext():
        try:
            async for ev in events:
                if isinstance(ev, FinishEvent):
                    yield ev
                    return
                yield ev
                if prep.stop and not ev.special:
                    text += ev.text
                    if stop_hit(text, ev.text, prep.stop):
                        yield FinishEvent(finish_reason="stop_sequence", seed=prep.params.seed)
                        return
        finally:
            await events.aclose()  # type: ignore[attr-defined]  # an async generator
    raise EngineError("engine ended without a finish event")


@dataclass
class Result:
    """A generation run to its end.

    Attributes:
        text: Generated text without special tokens (a stop sequence included, as TGI returns it).
        tokens: Every token event, special ones included.
        finish_reason: "length", "eos_token" or "stop_sequence".
        seed: The sampler's seed, when sampling.
        first_token_at: ``clock()`` (seconds) when the first token event arrived; None without tokens.
    """

    text: str
    tokens: list[TokenEvent]
    finish_reason: FinishReason
    seed: int | None
    first_token_at: float | None = None


async def collect(
    events: AsyncGenerator[TokenEvent | FinishEvent, None], clock: Callable[[], float] = time.perf_counter
) -> Result:
    """Run ``events`` (e.g. :func:`stream`) to the end and gather the result; the iterator is closed after.

    Args:
        events: Token events ending with a FinishEvent.
        clock: Clock (seconds) of ``Result.first_token_at``.

    Raises:
        EngineError: the events ended without a FinishEvent.
    """
    tokens: list[TokenEvent] = []
    finish: FinishEvent | None = None
    first: float | None = None
    async with contextlib.aclosing(events):
        async for ev in events:
            if isinstance(ev, FinishEvent):
                finish = ev
                break
            if first is None:
                first = clock()
            tokens.append(ev)
    if finish is None:
        raise EngineError("engine ended without a finish event")
    text = "".join(t.text for t in tokens if not t.special)
    return Result(text, tokens, finish.finish_reason, finish.seed, first)
