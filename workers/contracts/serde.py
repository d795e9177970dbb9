"""Serialization of wire models to and from Kafka message values (UTF-8 JSON) and headers.

Kept apart from the models (STYLE.md §6). Decoding never raises anything but :class:`MessageError`,
whose message says what was wrong, so a stage can dead-letter the input with that reason.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from workers.contracts.errors import MessageError
from workers.contracts.messages import WIRE_CONTEXT

M = TypeVar("M", bound=BaseModel)


def encode(model: BaseModel) -> bytes:
    """Serialize a wire model to compact UTF-8 JSON bytes."""
    return model.model_dump_json().encode("utf-8")


def decode(raw: bytes | None, model: type[M]) -> M:
    """Parse and validate one message value, as read from the wire (:data:`WIRE_CONTEXT`: a Request must carry
    its ``request_id``).

    Args:
        raw: the Kafka message value (``None`` for a tombstone).
        model: the wire model expected on this topic.

    Returns:
        The validated model instance.

    Raises:
        MessageError: empty value, invalid UTF-8, not JSON, wrong ``schema_version``, a Request without its
            ``request_id`` or a field that fails validation; the message names the first problems found.
    """
    if raw is None or len(raw) == 0:
        raise MessageError("empty message value")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageError(f"value is not valid UTF-8: {exc}") from exc
    try:
        return model.model_validate_json(text, context=WIRE_CONTEXT)
    except ValidationError as exc:
        errs = exc.errors(include_url=False)
        if errs and errs[0].get("type") == "json_invalid":
            raise MessageError(f"value is not JSON: {errs[0].get('msg')}") from exc
        parts = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in errs[:5]]
        raise MessageError(f"invalid {model.__name__} ({exc.error_count()} errors): " + "; ".join(parts)) from exc


def headers_to_dict(headers: list[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """Kafka headers (list of name/bytes pairs) as a ``str → str`` dict; undecodable bytes are replaced."""
    out: dict[str, str] = {}
    for name, value in headers or []:
        out[name] = "" if value is None else value.decode("utf-8", errors="replace")
    return out
