"""What a stage is and what it returns, for the stages and the runner alike (no I/O, no Kafka).

A stage is a class of its inputs and injected adapters (:class:`Stage`); per input it returns a
:class:`~workers.contracts.messages.Prompt` (handed to the next stage, or to the prompts topic), a
:class:`~workers.contracts.messages.Response`, or a :class:`Failure`, and the stream runner
(:mod:`workers.stream.runner`) decides what each becomes on the wire.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from workers.contracts.messages import Prompt, Response, ResponseStatus


@dataclass(frozen=True)
class Failure:
    """A stage could not serve one input; the runner answers the client and, when asked, dead-letters the input.

    Attributes:
        error: what went wrong (its ``error_class`` and message go into the answer and the dead letter).
        status: what the client is told: ``error`` (the default), ``model_unavailable``, ``expired``.
        dead_letter: also send the input to the dead-letter topic (for inputs an operator should look at).
        response: the error answer the stage built itself (with its timings, sources, provenance); ``None``:
            the runner builds a plain one.
    """

    error: BaseException
    status: ResponseStatus = "error"
    dead_letter: bool = True
    response: Response | None = None


#: What a stage returns per input: a Prompt for the next stage (or the prompts topic), an answer, or a failure.
StageResult = Prompt | Response | Failure


class Stage(Protocol):
    """A stage: a function of a micro-batch of inputs (and its injected adapters), one result per input, in order."""

    #: Stage name (``retriever``, ``generator``): written into dead letters and error answers.
    name: str

    async def run(self, inputs: Sequence[Any]) -> Sequence[StageResult]:
        """Process ``inputs``; return one result per input, in order. Raise only for the whole batch."""
        ...
