"""Trace assembly (workers.monitor.join) and batch decoding (MonitorSink.assemble_batch): no Kafka, no DB."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from workers.contracts.errors import MessageError
from workers.contracts.messages import ChatMessage, DeadLetter, ErrorInfo, Passage, Prompt, Request, Response, Usage
from workers.contracts.serde import encode
from workers.monitor.join import (
    assemble,
    bad_message,
    from_dead_letter,
    from_prompt,
    from_request,
    from_response,
    merge_updates,
    resolve,
    stage_latencies,
    stage_of,
    trace_status,
)
from workers.monitor.trace import OWNED_COLUMNS, SIG_COLUMN, KafkaCoords, TraceUpdate

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def _c(offset: int, topic: str = "rag.requests", partition: int = 0) -> KafkaCoords:
    return KafkaCoords(topic, partition, offset)


def _request(**kw: Any) -> Request:
    return Request(query="What does list.append do?", created_at=T0, **kw)


def _prompt(req: Request, **kw: Any) -> Prompt:
    return Prompt(
        request_id=req.request_id,
        created_at=T0 + timedelta(milliseconds=50),
        request=req,
        passages=[Passage(chunk_id="c1", document_id="d1", score=0.8, text="append adds", rank=0, tokens=12)],
        messages=[ChatMessage(role="user", content="q")],
        template_id="default",
        template_hash="abc123",
        prompt_tokens=42,
        max_new_tokens=64,
        passages_dropped=1,
        query_truncated=True,
        timings_ms={"embed_ms": 5.0, "search_ms": 3.0, "prompt_ms": 1.0},
        **kw,
    )


def _response(req: Request, **kw: Any) -> Response:
    base: dict[str, Any] = {
        "request_id": req.request_id,
        "created_at": T0 + timedelta(seconds=2),
        "answer": "It appends.",
        "finish_reason": "stop",
        "usage": Usage(prompt_tokens=42, completion_tokens=3, total_tokens=45),
        "model_id": "tiny",
        "timings_ms": {"llm_ttft_ms": 100.0, "llm_total_ms": 900.0, "generator_queue_ms": 7.0},
    }
    base.update(kw)
    return Response(**base)


def _state(update: TraceUpdate) -> dict[str, Any]:
    """The stored row's state after inserting ``update`` into an empty table."""
    state: dict[str, Any] = {}
    for part in update.parts.values():
        state.update(part.columns())
    return state


def test_request_owns_only_request_columns() -> None:
    req = _request(top_k=3, filters={"document_id": ["a"]})
    upd = from_request(req, _c(7))
    assert upd.request_id == req.request_id
    assert upd.kinds == {"request"}
    cols = upd.parts["request"].columns()
    assert set(cols) == set(OWNED_COLUMNS["request"])
    assert cols["query"] == req.query and cols["top_k"] == 3 and cols["filters"] == {"document_id": ["a"]}
    assert upd.last == _c(7)


def test_prompt_carries_the_embedded_request_with_the_same_version() -> None:
    req = _request()
    upd = from_prompt(_prompt(req), _c(3, "rag.prompts"))
    assert upd.kinds == {"request", "prompt"}
    assert upd.parts["request"].version == from_request(req, _c(0)).parts["request"].version
    cols = upd.parts["prompt"].values
    assert cols["passages"] == [{"chunk_id": "c1", "document_id": "d1", "score": 0.8, "rank": 0, "tokens": 12}]
    assert cols["messages"] == [{"role": "user", "content": "q"}]
    assert (cols["template_id"], cols["template_hash"], cols["prompt_tokens"]) == ("default", "abc123", 42)
    assert cols["passages_dropped"] == 1 and cols["query_truncated"] is True


def test_response_columns_with_error() -> None:
    req = _request()
    resp = _response(req, status="error", answer=None, error=ErrorInfo(error_class="x", message="boom", stage="llm"))
    cols = from_response(resp, _c(1, "rag.responses")).parts["response"].values
    assert cols["response_status"] == "error" and cols["answer"] is None
    assert (cols["response_error_class"], cols["response_error_message"], cols["response_error_stage"]) == (
        "x",
        "boom",
        "llm",
    )


def test_merge_in_any_order_gives_the_same_update() -> None:
    req = _request()
    ups = [from_request(req, _c(0)), from_prompt(_prompt(req), _c(1)), from_response(_response(req), _c(2))]
    a = merge_updates(ups)
    b = merge_updates(list(reversed(ups)))
    assert len(a) == len(b) == 1
    assert {k: p.version for k, p in a[0].parts.items()} == {k: p.version for k, p in b[0].parts.items()}
    assert a[0].kinds == {"request", "prompt", "response"}


def test_merge_keeps_the_greater_version_and_rejects_other_ids() -> None:
    req = _request()
    old = from_response(_response(req), _c(1))
    new = from_response(_response(req, created_at=T0 + timedelta(seconds=5), answer="later"), _c(2))
    assert new.merge(old).parts["response"].values["answer"] == "later"
    assert old.merge(new).parts["response"].values["answer"] == "later"
    with pytest.raises(ValueError):
        old.merge(from_request(_request(), _c(0)))


def test_merge_updates_keeps_one_update_per_request_id_in_first_seen_order() -> None:
    r1, r2 = _request(), _request()
    merged = merge_updates([from_request(r1, _c(0)), from_request(r2, _c(1)), from_prompt(_prompt(r1), _c(2))])
    assert [u.request_id for u in merged] == [r1.request_id, r2.request_id]
    assert merged[0].kinds == {"request", "prompt"}


def test_resolve_new_row_counts_every_kind_and_latencies() -> None:
    req = _request()
    upd = merge_updates([from_prompt(_prompt(req), _c(1)), from_response(_response(req), _c(2))])[0]
    effective, change = resolve(None, upd)
    assert effective is not None and effective.kinds == {"request", "prompt", "response"}
    assert change.new_kinds == {"request", "prompt", "response"}
    assert change.status == "ok" and change.error is None
    assert change.latencies_s == pytest.approx(
        {
            "embed": 0.005,
            "search": 0.003,
            "prompt": 0.001,
            "queue": 0.007,
            "llm_ttft": 0.1,
            "llm_total": 0.9,
            "end_to_end": 2.0,
        }
    )


def test_resolve_redelivery_changes_nothing() -> None:
    req = _request()
    upd = merge_updates(
        [from_request(req, _c(0)), from_prompt(_prompt(req), _c(1)), from_response(_response(req), _c(2))]
    )[0]
    state = _state(upd)
    effective, change = resolve(state, upd)
    assert effective is None
    assert change.new_kinds == frozenset() and change.status is None and not change.latencies_s
    # The request alone, redelivered after the prompt that embeds it: no change either.
    assert resolve(state, from_request(req, _c(0)))[0] is None


def test_resolve_older_event_of_a_kind_does_not_replace_a_newer_one() -> None:
    req = _request()
    newer = from_response(_response(req, created_at=T0 + timedelta(seconds=9), answer="new"), _c(5))
    older = from_response(_response(req), _c(2))
    assert resolve(_state(newer), older)[0] is None
    effective, change = resolve(_state(older), newer)
    assert effective is not None and change.new_kinds == frozenset() and change.status is None
    assert not change.latencies_s  # only the first response of a request is observed


def test_resolve_response_before_request_observes_end_to_end_when_the_request_comes() -> None:
    req = _request()
    resp_only = from_response(_response(req, timings_ms={"llm_total_ms": 10.0}), _c(2))
    _, first = resolve(None, resp_only)
    assert "end_to_end" not in first.latencies_s and first.status == "ok"
    effective, later = resolve(_state(resp_only), from_request(req, _c(0)))
    assert effective is not None and later.new_kinds == {"request"}
    assert later.latencies_s == pytest.approx({"end_to_end": 2.0})


def test_dead_letter_with_and_without_request_id() -> None:
    rid = uuid.uuid4()
    dl = DeadLetter(
        request_id=rid,
        source_topic="rag.prompts",
        partition=2,
        offset=17,
        value_b64="e30=",
        error_class="prompt_too_large",
        error_message="too big",
        stage="generator",
    )
    joined = from_dead_letter(dl, _c(4, "rag.dead-letter"))
    assert joined.update is not None and joined.update.request_id == rid
    assert joined.error is not None
    assert (joined.error.source_topic, joined.error.source_partition, joined.error.source_offset) == (
        "rag.prompts",
        2,
        17,
    )
    _, change = resolve(None, joined.update)
    assert change.error == ("prompt_too_large", "generator") and change.status is None
    assert trace_status(_state(joined.update)) == "dead_letter"

    anon = dl.model_copy(update={"request_id": None})
    assert from_dead_letter(anon, _c(5)).update is None
    hdr = dl.model_copy(update={"request_id": None, "headers": {"request_id": str(rid)}})
    upd = from_dead_letter(hdr, _c(6)).update
    assert upd is not None and upd.request_id == rid
    bad_hdr = dl.model_copy(update={"request_id": None, "headers": {"request_id": "nope"}})
    assert from_dead_letter(bad_hdr, _c(7)).update is None


def test_assemble_dispatches_and_rejects_other_types() -> None:
    req = _request()
    assert assemble(req, _c(0)).update is not None
    with pytest.raises(TypeError):
        assemble("nope", _c(0))  # type: ignore[arg-type]  # wrong type on purpose


def test_bad_message_record_keeps_coordinates_value_and_request_id() -> None:
    rid = uuid.uuid4()
    raw = json.dumps({"request_id": str(rid), "answer": None}).encode()
    rec = bad_message(raw, _c(9, "rag.responses", 2), MessageError("invalid Response"))
    assert (rec.source_topic, rec.source_partition, rec.source_offset, rec.stage) == ("rag.responses", 2, 9, "monitor")
    assert rec.kind == "bad_message" and rec.error_class == "bad_message" and rec.request_id == rid
    assert rec.value_b64 is not None and base64.b64decode(rec.value_b64) == raw
    assert bad_message(b"\xff\xfe", _c(1), ValueError("x")).request_id is None
    assert bad_message(None, _c(1), ValueError("x")).error_class == "ValueError"


def test_stage_mapping() -> None:
    assert stage_of("embed_ms") == "embed" and stage_of("llm_ttft_ms") == "llm_ttft"
    assert stage_of("generator_queue_ms") == "queue" and stage_of("end_to_end_ms") == "end_to_end"
    assert stage_of("generator_ms") is None
    assert stage_latencies({"retriever_queue_ms": 2.0, "generator_queue_ms": 3.0, "bad": "x", "embed_ms": -1}) == {
        "queue": pytest.approx(0.005)
    }


def test_trace_status_precedence() -> None:
    assert trace_status({SIG_COLUMN["request"]: "s"}) == "requested"
    assert trace_status({SIG_COLUMN["request"]: "s", SIG_COLUMN["prompt"]: "s"}) == "prompted"
    assert trace_status({SIG_COLUMN["dead_letter"]: "s", "response_status": "error"}) == "dead_letter"
    assert trace_status({SIG_COLUMN["dead_letter"]: "s", "response_status": "ok"}) == "ok"
    assert trace_status({"response_status": "expired"}) == "expired"


def test_sink_assemble_batch_records_undecodable_messages() -> None:
    from prometheus_client import CollectorRegistry

    from workers.monitor.metrics import build_metrics
    from workers.monitor.sink import MonitorSink, topic_names
    from workers.settings import Settings, TopicSettings

    settings = Settings(topics=TopicSettings(prefix="x."))
    names = topic_names(settings)
    sink = MonitorSink(recorder=None, metrics=build_metrics(CollectorRegistry()), topics=names)  # type: ignore[arg-type]  # no DB needed
    req = _request()
    null_answer = json.dumps({"request_id": str(req.request_id), "status": "ok", "answer": None}).encode()
    batch = [
        (KafkaCoords("x.rag.requests", 0, 0), encode(req)),
        (KafkaCoords("x.rag.responses", 1, 4), null_answer),
        (KafkaCoords("x.rag.prompts", 0, 1), b"not json"),
        (KafkaCoords("x.rag.requests", 0, 2), None),
        (KafkaCoords("elsewhere", 0, 0), encode(req)),
    ]
    updates, errors = sink.assemble_batch(batch)
    assert [u.request_id for u in updates] == [req.request_id]
    assert [(e.source_topic, e.source_partition, e.source_offset) for e in errors] == [
        ("x.rag.responses", 1, 4),
        ("x.rag.prompts", 0, 1),
        ("x.rag.requests", 0, 2),
        ("elsewhere", 0, 0),
    ]
    assert errors[0].request_id == req.request_id and "answer" in errors[0].error_message
    assert errors[-1].error_class == "config"


def test_sink_records_a_request_without_request_id_as_a_bad_message_not_a_trace() -> None:
    """Issue 14 #9: no invented request id, so no trace row stuck at ``requested``; an error record instead."""
    from prometheus_client import CollectorRegistry

    from workers.monitor.metrics import build_metrics
    from workers.monitor.sink import MonitorSink, topic_names
    from workers.settings import Settings, TopicSettings

    names = topic_names(Settings(topics=TopicSettings(prefix="x.")))
    sink = MonitorSink(recorder=None, metrics=build_metrics(CollectorRegistry()), topics=names)  # type: ignore[arg-type]  # no DB needed
    no_id = json.dumps({"schema_version": 1, "query": "What does pass do?"}).encode()
    updates, errors = sink.assemble_batch([(KafkaCoords("x.rag.requests", 0, 7), no_id)])
    assert updates == []
    assert len(errors) == 1 and errors[0].error_class == "bad_message" and errors[0].request_id is None
    assert "request_id: Value error, missing" in errors[0].error_message
