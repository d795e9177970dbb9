"""The OpenAI chat completions API as the gateway speaks it: the request body, its mapping onto a ragstream
:class:`~workers.contracts.messages.Request`, the answers (whole and as stream chunks) and errors (pure: no I/O).

Mapping (vLLM's ``entrypoints/openai`` is the model): the last message must be the user's and is the query; the
earlier ones travel as ``Request.history`` (``developer`` is read as ``system``; tool messages and non-text content
parts are refused); ``max_tokens`` / ``max_completion_tokens`` → ``max_new_tokens``, ``temperature``, ``top_p``,
``seed``, ``stop`` (a string or a list) pass through; ``n`` must be 1. Two extension fields (``extra_body`` of the
official client): ``top_k`` and ``filters``. Unknown fields are ignored, as OpenAI-compatible servers do.

Answers carry ``usage`` and, as extension fields, ``sources`` (document and chunk ids, scores, whether the answer
cites them, and the passage text when it is known) and ``ragstream`` (request id, status, per-stage timings in ms).
Errors are OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from workers.contracts.messages import (
    ChatMessage,
    GenerationParams,
    Passage,
    Request,
    Response,
)

#: HTTP status and OpenAI error type of each non-answer status of a Response.
STATUS_ERRORS: dict[str, tuple[int, str]] = {
    "rejected": (400, "invalid_request_error"),
    "error": (502, "upstream_error"),
    "expired": (504, "timeout"),
    "model_unavailable": (503, "service_unavailable"),
    "cancelled": (499, "cancelled"),
}


class BadRequest(Exception):
    """A request the gateway refuses (400): the message and the field (``param``) at fault."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ContentPart(BaseModel):
    """One part of a message's content (only ``text`` parts are accepted)."""

    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class InMessage(BaseModel):
    """One message of the request."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None

    def text(self, index: int) -> str:
        """The message's text (text parts joined).

        Raises:
            BadRequest: a part is not text.
        """
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        out: list[str] = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise BadRequest(f"messages[{index}]: only text content is supported, not {part.type!r}", "messages")
            out.append(part.text)
        return "".join(out)


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with the usage."""

    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The body of ``POST /v1/chat/completions`` (the fields ragstream reads; others are ignored)."""

    model_config = ConfigDict(extra="ignore")

    model: str = ""
    messages: list[InMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, le=32_768)
    max_completion_tokens: int | None = Field(None, ge=1, le=32_768)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1)
    top_k: int | None = Field(None, ge=1, le=100)
    filters: dict[str, str | list[str]] = Field(default_factory=dict)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v


def validation_message(exc: ValidationError) -> tuple[str, str | None]:
    """A one-line message of a validation error and the field at fault (``param``)."""
    parts: list[str] = []
    param: str | None = None
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if not isinstance(x, int) or x >= 0)
        param = param or (str(err["loc"][0]) if err.get("loc") else None)
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    return "; ".join(parts) or "invalid request", param


def parse_body(data: Any) -> ChatCompletionRequest:
    """The request body, validated.

    Raises:
        BadRequest: the body is not an object or a field is invalid (``messages: []`` among them).
    """
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        message, param = validation_message(exc)
        raise BadRequest(message, param) from None


def to_request(
    body: ChatCompletionRequest,
    *,
    request_id: uuid.UUID,
    reply_partition: int,
    now: datetime,
    timeout_s: float,
) -> Request:
    """The ragstream Request of a chat completion request (see the module docstring).

    Raises:
        BadRequest: the last message is not the user's, a message is not text or is a tool message, or the
            Request's own limits refuse a value (a question over 20,000 characters, ...).
    """
    history: list[ChatMessage] = []
    for i, m in enumerate(body.messages[:-1]):
        if m.role in ("tool", "function"):
            raise BadRequest(f"messages[{i}]: {m.role} messages are not supported", "messages")
        role: Literal["system", "user", "assistant"] = "system" if m.role == "developer" else m.role  # type: ignore[assignment]  # tool/function refused above
        history.append(ChatMessage(role=role, content=m.text(i)))
    last = body.messages[-1]
    if last.role != "user":
        raise BadRequest("the last message must be the user's question (role 'user')", "messages")
    query = last.text(len(body.messages) - 1).strip()
    if not query:
        raise BadRequest("the last user message is empty", "messages")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    gen: dict[str, Any] = {"temperature": body.temperature, "top_p": body.top_p, "seed": body.seed, "stop": stop}
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens is not None:
        gen["max_new_tokens"] = max_tokens
    try:
        return Request(
            request_id=request_id,
            created_at=now,
            query=query,
            top_k=body.top_k,
            filters=body.filters,
            generation=GenerationParams(**gen),
            deadline=now + timedelta(seconds=timeout_s),
            reply_partition=reply_partition,
            stream_tokens=body.stream,
            history=history,
        )
    except ValidationError as exc:
        message, param = validation_message(exc)
        raise BadRequest(message, param) from None


def error_body(message: str, type_: str, *, param: str | None = None, code: str | int | None = None) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def completion_id(request_id: uuid.UUID) -> str:
    """The ``id`` of the completion of ``request_id``."""
    return f"chatcmpl-{request_id.hex}"


def usage_of(resp: Response) -> dict[str, int]:
    """OpenAI's ``usage`` of a Response."""
    u = resp.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens}


def sources_of(resp: Response, passages: list[Passage]) -> list[dict[str, Any]]:
    """The ``sources`` extension: the Response's sources, with the passage text when the token stream brought it."""
    text = {p.chunk_id: p.text for p in passages}
    return [
        {
            "document_id": s.document_id,
            "chunk_id": s.chunk_id,
            "score": s.score,
            "cited": s.cited,
            "text": text.get(s.chunk_id),
        }
        for s in resp.sources
    ]


def extension_of(resp: Response) -> dict[str, Any]:
    """The ``ragstream`` extension: request id, status, model id, per-stage timings (ms)."""
    return {
        "request_id": str(resp.request_id),
        "status": resp.status,
        "model_id": resp.model_id,
        "timings_ms": {k: round(v, 2) for k, v in resp.timings_ms.items()},
    }


def completion(resp: Response, model: str, created: int) -> dict[str, Any]:
    """The whole answer (``stream: false``) of an ``ok`` or ``no_context`` Response."""
    return {
        "id": completion_id(resp.request_id),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": resp.answer or ""},
                "logprobs": None,
                "finish_reason": resp.finish_reason or "stop",
            }
        ],
        "usage": usage_of(resp),
        "sources": sources_of(resp, []),
        "ragstream": extension_of(resp),
    }


def chunk(
    request_id: uuid.UUID,
    model: str,
    created: int,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` of a stream."""
    return {
        "id": completion_id(request_id),
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        **extra,
    }


def usage_chunk(request_id: uuid.UUID, model: str, created: int, resp: Response) -> dict[str, Any]:
    """The last chunk with ``stream_options.include_usage``: no choices, the usage."""
    return {
        "id": completion_id(request_id),
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage_of(resp),
    }


def response_error(resp: Response) -> tuple[int, dict[str, Any]]:
    """HTTP status and OpenAI error body of a Response that carries no answer."""
    status, type_ = STATUS_ERRORS.get(resp.status, (500, "server_error"))
    message = resp.error.message if resp.error is not None else resp.status
    code = resp.error.error_class if resp.error is not None else resp.status
    body = error_body(message, type_, code=code)
    body["ragstream"] = extension_of(resp)
    return status, body


def now_s() -> int:
    """Seconds since the epoch (the ``created`` of answers)."""
    return int(time.time())
