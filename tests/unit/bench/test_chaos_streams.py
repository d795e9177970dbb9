"""The chaos run's stream classification and checks (:mod:`bench.chaos_streams`), on hand-written SSE lines."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from bench.chaos_streams import StreamOutcome, parse_stream, stream_checks
from workers.contracts.messages import ErrorInfo, Response


def chunk(content: str | None = None, finish: str | None = None) -> str:
    delta = {} if content is None else {"content": content}
    return "data: " + json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


ERROR = "data: " + json.dumps({"error": {"message": "the model is loading", "type": "server_error", "code": "x"}})


def test_a_stream_ending_with_finish_reason_and_done_is_complete() -> None:
    lines = [chunk(""), chunk("Par"), chunk("is."), chunk(None, "stop"), "data: [DONE]"]
    assert parse_stream(lines) == ("complete", "Paris.", "")


def test_an_error_chunk_then_done_is_an_error_chunk() -> None:
    kind, text, detail = parse_stream([chunk(""), chunk("Pa"), ERROR, "data: [DONE]"])
    assert (kind, text) == ("error_chunk", "Pa") and detail == "x: the model is loading"


def test_streams_cut_or_malformed_are_neither() -> None:
    assert parse_stream([chunk("Pa"), chunk(None, "stop")])[0] == "neither"  # no [DONE]
    assert parse_stream([chunk("Pa"), "data: [DONE]"])[0] == "neither"  # neither finish_reason nor error
    assert parse_stream(["data: {not json", "data: [DONE]"])[0] == "neither"
    assert parse_stream([chunk(None, "stop"), "data: [DONE]", chunk("late")])[0] == "neither"
    assert parse_stream([chunk(None, "stop"), ERROR, "data: [DONE]"])[0] == "neither"


def response(rid: uuid.UUID, answer: str, status: str = "ok") -> Response:
    error = None if status == "ok" else ErrorInfo(error_class="model_loading", message="busy", stage="generator")
    return Response(request_id=rid, status=status, answer=answer or None, error=error, created_at=datetime.now(UTC))


def test_checks_count_mixed_and_lost_streams() -> None:
    a, b, c, d = (uuid.uuid4() for _ in range(4))
    outcomes = [
        StreamOutcome(0, 0, "complete", a, "Paris."),
        StreamOutcome(1, 1, "complete", b, "Paris."),  # its answer says something else: mixed
        StreamOutcome(2, 0, "error_chunk", c, "", "model_loading: busy"),
        StreamOutcome(3, 1, "complete", d, "Rome."),  # no Response: lost
        StreamOutcome(4, 0, "refused", None, "", "HTTP 503 broker_unavailable: down"),
    ]
    by_id = {a: [response(a, "Paris.")], b: [response(b, "Rome.")], c: [response(c, "", "model_unavailable")]}
    rows, events = stream_checks(outcomes, by_id, count=5, gateways=2)
    got = {name.strip(): (value, ok) for name, value, _expected, ok in rows}
    assert got["streams through 2 gateway replicas"] == ("5", True)
    assert got["complete (finish_reason, [DONE])"] == ("3", None)
    assert got["neither (cut, no [DONE], not the OpenAI shape)"] == ("0", True)
    assert got["complete streams whose text differs from their Response (mixed)"] == ("1", False)
    assert got["accepted streams without a Response on the topic"] == ("1", False)
    assert any("differs from its Response" in e for e in events)
    assert any(e.startswith("stream errors by code:") and "HTTP 503 broker_unavailable 1" in e for e in events)


def test_a_complete_stream_equal_to_the_first_final_answer_passes() -> None:
    rid = uuid.uuid4()
    by_id = {rid: [response(rid, "", "model_unavailable"), response(rid, "Paris."), response(rid, "Paris.")]}
    rows, _ = stream_checks([StreamOutcome(0, 0, "complete", rid, "Paris.")], by_id, count=1, gateways=2)
    assert all(ok is not False for *_, ok in rows)
