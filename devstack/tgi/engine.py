"""The engine interface behind the TGI-compatible server (no implementation is imported here).

An engine turns a prompt into a stream of token events. What is the same for every engine lives apart from
it: request validation and limits, stop sequences and admission in ``devstack.tgi.generation`` (shared by the
HTTP layer ``devstack.tgi.server`` and the in-process adapter ``workers.adapters.llm_engine``), TGI/OpenAI
response formats in ``devstack.tgi.server``. A new engine implements :class:`Engine` and registers a factory
with ``devstack.tgi.engines.register_engine`` (the registry, like TGI's ``get_model``, is the only module that
knows the implementations). Built in: "transformers" (a real causal LM) and "simulated" (filler tokens with a
configurable time to first token, time per token, batch capacity and fault schedule; see
``devstack.tgi.simulated_engine``).

Optional hooks let an engine act on the HTTP layer: :meth:`Engine.on_request` sees every generation request
as it arrives (and may delay it or reject it with :class:`EngineRejectedError`), and
:meth:`Engine.admin_router` adds dev-only routes to the app.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from fastapi import APIRouter

#: TGI's finish reasons. The chat API maps "eos_token" and "stop_sequence" to "stop".
FinishReason = Literal["length", "eos_token", "stop_sequence"]


@dataclass(frozen=True)
class EngineInfo:
    """What ``GET /info`` reports about the engine's model.

    Attributes:
        model_id: Model name shown to clients.
        model_sha: Revision of the weights, if known.
        model_dtype: Torch dtype name, e.g. "torch.float32".
        model_device_type: "cpu" or "cuda".
        max_position_embeddings: Longest sequence (tokens) the model can attend to.
    """

    model_id: str
    model_sha: str | None
    model_dtype: str
    model_device_type: str
    max_position_embeddings: int


@dataclass(frozen=True)
class TokenSpan:
    """One token of a tokenized text, as ``POST /tokenize`` returns it.

    Attributes:
        id: Token id.
        text: The token's surface text.
        start: Character offset where the token starts in the input (inclusive).
        stop: Character offset where it ends (exclusive).
    """

    id: int
    text: str
    start: int
    stop: int


@dataclass(frozen=True)
class GenerationParams:
    """Decoding parameters of one request, already validated by the server.

    Attributes:
        max_new_tokens: Upper bound of generated tokens (the eos token included).
        do_sample: Sample instead of greedy decoding; implied by temperature/top_p/top_k.
        temperature: Softmax temperature (> 0) when sampling.
        top_p: Nucleus sampling mass in (0, 1].
        top_k: Keep only the k most likely tokens (0 = off).
        repetition_penalty: CTRL-style penalty (> 0; 1.0 = off).
        seed: Random seed of the sampler; the engine picks one when None and sampling.
        request_id: Id the server gave the request (the one passed to :meth:`Engine.on_request`), so an
            engine can find state it attached to the request; None when the caller is not the server.
    """

    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class TokenEvent:
    """One generated token.

    Attributes:
        id: Token id.
        text: The text this token adds to the output (may be "" while a multi-byte character is incomplete).
        logprob: Natural-log probability of the token under the decoding distribution.
        special: True for special tokens (eos); their text is not part of ``generated_text``.
    """

    id: int
    text: str
    logprob: float
    special: bool = False


@dataclass(frozen=True)
class FinishEvent:
    """End of one generation: always the last event of :meth:`Engine.generate_stream`.

    Attributes:
        finish_reason: "length" (``max_new_tokens`` reached) or "eos_token".
        seed: The seed used when sampling, else None.
    """

    finish_reason: FinishReason
    seed: int | None = None


class EngineError(Exception):
    """Generation failed inside the engine (reported to clients as TGI's ``error_type: generation``)."""


class EngineRejectedError(Exception):
    """The engine refuses a request before generating; the server answers it in TGI's error format.

    Args:
        status: HTTP status (e.g. 429, 503, 422).
        error_type: TGI error type ("overloaded", "loading", "validation", ...).
        message: Human-readable message (the body's ``error``).
        extra: More fields of the JSON body, e.g. ``{"estimated_time": 20.0}`` (seconds) for "loading".
    """

    def __init__(self, status: int, error_type: str, message: str, extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        """The JSON error body: ``{"error": ..., "error_type": ..., **extra}``."""
        return {"error": self.message, "error_type": self.error_type, **self.extra}


class Engine(ABC):
    """A text-generation backend of the TGI-compatible server."""

    @abstractmethod
    def info(self) -> EngineInfo:
        """Describe the model (``GET /info``)."""

    @abstractmethod
    def tokenize(self, text: str) -> list[TokenSpan]:
        """Split ``text`` into the model's tokens, with character offsets (special tokens are not added)."""

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` as the model reads it (prompt length for limits and usage)."""
        return len(self.tokenize(text))

    @abstractmethod
    def apply_chat_template(self, messages: Sequence[Mapping[str, str]]) -> str:
        """Render chat messages (``{"role": ..., "content": ...}``) into one prompt, with the assistant cue."""

    @abstractmethod
    def generate_stream(self, prompt: str, params: GenerationParams) -> AsyncIterator[TokenEvent | FinishEvent]:
        """Generate from ``prompt``: yield :class:`TokenEvent` as tokens appear, then one :class:`FinishEvent`.

        Closing the iterator early (``aclose()``, e.g. on a stop sequence or a client disconnect) must stop
        the generation and free its resources.

        Raises:
            EngineError: the model failed.
        """

    async def on_request(self, request_id: str) -> None:  # noqa: B027 - optional hook
        """See a generation request as it arrives, before validation (default: nothing).

        Args:
            request_id: Unique id of the request; the server passes it on in ``GenerationParams.request_id``.

        Raises:
            EngineRejectedError: the request is refused with that HTTP error.
        """

    def admin_router(self) -> APIRouter | None:
        """Extra dev-only routes the server mounts (default: None, no routes)."""
        return None

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load the model; called once before the first request (the server's lifespan, or
        ``workers.adapters.llm_engine.EngineLLM`` on first use)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Free resources; called once at shutdown (of the server, or of the in-process adapter)."""
