"""Wire models and serde: validation errors become MessageError with a reason, never a crash."""

from __future__ import annotations

import json
import uuid

import pytest

from workers.contracts.errors import MessageError
from workers.contracts.messages import (
    FINAL_STATUSES,
    WIRE_MODELS,
    CancelEvent,
    ChatMessage,
    ErrorInfo,
    Request,
    Response,
    TokenEvent,
    Usage,
)
from workers.contracts.serde import decode, encode


def test_request_round_trip() -> None:
    req = Request(query="What does pass do?", top_k=3, filters={"document_id": ["pass"]})
    back = decode(encode(req), Request)
    assert back == req
    assert back.schema_version == 1
    assert back.created_at.tzinfo is not None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (b"\xff\xfe not utf8", "UTF-8"),
        (b"{not json", "not JSON"),
        (json.dumps({"schema_version": 2, "query": "q"}).encode(), "schema_version"),
        (json.dumps({"schema_version": 1}).encode(), "query"),
        (json.dumps({"schema_version": 1, "query": ""}).encode(), "query"),
    ],
)
def test_bad_requests_raise_message_error_with_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(MessageError) as exc:
        decode(raw, Request)
    assert reason in str(exc.value)


def test_ok_response_needs_answer_and_error_response_needs_error() -> None:
    rid = uuid.uuid4()
    with pytest.raises(ValueError):
        Response(request_id=rid, status="ok", answer=None)
    with pytest.raises(ValueError):
        Response(request_id=rid, status="error", answer=None)
    r = Response(
        request_id=rid,
        status="expired",
        answer=None,
        error=ErrorInfo(error_class="expired", message="late", stage="retriever"),
    )
    assert decode(encode(r), Response).status == "expired"
    raw = json.dumps({"schema_version": 1, "request_id": str(rid), "status": "ok", "answer": None}).encode()
    with pytest.raises(MessageError):
        decode(raw, Response)


def test_json_schemas_have_schema_version() -> None:
    for name, model in WIRE_MODELS.items():
        schema = model.model_json_schema()
        assert "schema_version" in schema["properties"], name


def test_a_request_on_the_wire_must_carry_its_request_id() -> None:
    """Issue 14 #9: built in Python a Request gets a fresh id; read from the wire it must name its own."""
    assert Request(query="q").request_id != Request(query="q").request_id
    body = {"schema_version": 1, "query": "What does pass do?"}
    with pytest.raises(MessageError, match="request_id: Value error, missing"):
        decode(json.dumps(body).encode(), Request)
    rid = uuid.uuid4()
    assert decode(json.dumps({**body, "request_id": str(rid)}).encode(), Request).request_id == rid
    assert Request.model_json_schema()["required"] == ["request_id", "query"]


def test_no_context_carries_its_message_and_rejected_its_error() -> None:
    rid = uuid.uuid4()
    no_context = Response(request_id=rid, status="no_context", answer="No passage matches.")
    assert decode(encode(no_context), Response) == no_context
    with pytest.raises(ValueError):
        Response(request_id=rid, status="no_context", answer=None)
    with pytest.raises(ValueError):
        Response(request_id=rid, status="rejected", answer=None)
    info = ErrorInfo(error_class="bad_message", message="top_k: >= 1", stage="retriever")
    assert decode(encode(Response(request_id=rid, status="rejected", answer=None, error=info)), Response).error == info


def test_a_request_carries_history_reply_partition_and_streaming() -> None:
    """Issue 13: earlier turns, the asking replica's partition and the token-stream flag travel on the wire."""
    req = Request(
        query="what about its return value?",
        history=[ChatMessage(role="user", content="What does len do?"), ChatMessage(role="assistant", content="x")],
        reply_partition=3,
        stream_tokens=True,
    )
    back = decode(encode(req), Request)
    assert back.history == req.history and back.reply_partition == 3 and back.stream_tokens
    with pytest.raises(ValueError, match="history"):
        Request(query="q", history=[ChatMessage(role="user", content="x" * 200_001)])
    with pytest.raises(ValueError):
        Request(query="q", reply_partition=-1)


def test_token_events_cancel_events_and_the_cancelled_status() -> None:
    rid = uuid.uuid4()
    ev = TokenEvent(request_id=rid, attempt=5, seq=0, offset=0, delta=" lorem", tokens=1)
    assert decode(encode(ev), TokenEvent) == ev
    last = TokenEvent(request_id=rid, attempt=5, seq=1, offset=6, final=True, finish_reason="length", usage=Usage())
    assert decode(encode(last), TokenEvent).final
    assert decode(encode(CancelEvent(request_id=rid)), CancelEvent).kind == "cancel"
    info = ErrorInfo(error_class="cancelled", message="client went away", stage="generator")
    resp = Response(request_id=rid, status="cancelled", answer=None, error=info)
    assert decode(encode(resp), Response).status == "cancelled" and "cancelled" in FINAL_STATUSES
    with pytest.raises(ValueError):
        Response(request_id=rid, status="cancelled", answer=None)  # an error is required
