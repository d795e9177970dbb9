"""Run sources and loading: source specs, labels, the evaluation set, records and trace rows to answers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from workers.contracts.errors import ConfigError
from workers.contracts.messages import Provenance, Request, Response, Source, Usage
from workers.contracts.serde import encode
from workers.evaluation.runs import (
    RunData,
    RunSource,
    SourceRef,
    answer_from_trace_row,
    evaluation_ids,
    load_labels,
    parse_source,
    rebase_timings,
    run_from_records,
)
from workers.kafka.reader import TopicRecord

from .cases import make_answer, make_ids


def test_rebase_shifts_only_created_at_stages_and_clamps_at_zero() -> None:
    t = {"retriever_queue_ms": 5000.0, "end_to_end_ms": 5200.0, "embed_ms": 4.0}
    out = rebase_timings(t, 4900.0)
    assert out == {"retriever_queue_ms": 100.0, "end_to_end_ms": 300.0, "embed_ms": 4.0}
    assert rebase_timings(t, 10_000.0)["end_to_end_ms"] == 0.0
    assert rebase_timings(t, -5.0) == t


def test_load_labels_normalizes_queries_and_rejects_bad_lines(tmp_path: Path) -> None:
    p = tmp_path / "q.jsonl"
    p.write_text('{"q": "What  is X?", "topics": ["x", "y"]}\n\n{"q": "b", "topics": []}\n')
    assert load_labels(p) == {"what is x?": frozenset({"x", "y"}), "b": frozenset()}
    p.write_text('{"question": "no"}\n')
    with pytest.raises(ConfigError, match=":1:"):
        load_labels(p)
    with pytest.raises(ConfigError):
        load_labels(tmp_path / "missing.jsonl")


def test_public_questions_file_has_20_labelled_questions() -> None:
    path = Path(__file__).resolve().parents[4] / "shared" / "data" / "questions_public.jsonl"
    if not path.exists():
        pytest.skip("no shared questions file")
    assert len(load_labels(path)) == 20


def test_evaluation_ids_are_the_candidates_requests() -> None:
    ids = make_ids(3)
    cand = RunData("candidate", "c", queries={ids[1]: "b", ids[0]: "a"}, answers={ids[2]: make_answer(ids[2])})
    assert evaluation_ids(RunData("baseline", ""), cand) == [ids[0], ids[1]]
    only_answers = RunData("candidate", "c", answers={ids[2]: make_answer(ids[2])})
    assert evaluation_ids(RunData("baseline", ""), only_answers) == [ids[2]]


def test_parse_source_forms_and_bad_names() -> None:
    assert parse_source("live", "t1.") == RunSource("topics", "t1.")
    assert parse_source("run:k3") == RunSource("topics", "rag.eval.k3.")
    assert parse_source("topics:foo.") == RunSource("topics", "foo.")
    assert parse_source("table:rag_traces") == RunSource("table", "rag_traces")
    # the report names them as a person wrote them: the live topics are "live", not "topics:" + an empty prefix
    assert str(parse_source("live")) == "live" and str(parse_source("topics:", "")) == "live"
    assert str(parse_source("run:k3")) == "run:k3" and str(parse_source("topics:foo.")) == "topics:foo."
    assert str(parse_source("table:rag_traces")) == "table:rag_traces"
    for bad in ("nope", "run:", "run:a b", "table:x;drop", "file:x"):
        with pytest.raises(ConfigError):
            parse_source(bad)


def _resp(req: Request, status: str = "ok", e2e: float = 50.0, run_id: str | None = None) -> Response:
    return Response(
        request_id=req.request_id,
        status=status,  # type: ignore[arg-type]  # a literal from the test's parameters
        answer="ans" if status == "ok" else None,
        error=None if status == "ok" else {"error_class": status, "message": "m", "stage": "generator"},  # type: ignore[arg-type]
        usage=Usage(prompt_tokens=100, completion_tokens=20, total_tokens=120),
        sources=[Source(document_id="assert", chunk_id="assert#0", score=0.9)],
        timings_ms={"end_to_end_ms": e2e, "retriever_queue_ms": e2e - 40, "embed_ms": 3.0},
        provenance=Provenance(top_k=3, template_id="concise", run_id=run_id),
    )


def test_run_from_records_rebases_replayed_requests_and_dedupes() -> None:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    req = Request(query="What does assert do?", created_at=created)
    live_req = Request(query="live one", created_at=created)
    replay_ts = int((created + timedelta(hours=1)).timestamp() * 1000)
    reqs = [
        TopicRecord(encode(req), replay_ts, {"replay_run": "r1"}),
        TopicRecord(encode(live_req), replay_ts, {}),
        TopicRecord(b"not json", None, {}),
    ]
    hour_ms = 3_600_000.0
    resps = [
        TopicRecord(encode(_resp(req, e2e=hour_ms + 250.0, run_id="r1")), None, {}),
        TopicRecord(encode(_resp(req, e2e=1.0)), None, {}),  # a duplicate: ignored
        TopicRecord(encode(_resp(live_req, e2e=80.0)), None, {}),
    ]
    run = run_from_records("candidate", "topics:x.", reqs, resps)
    assert run.undecodable == 1 and run.duplicates == 1
    assert run.queries == {req.request_id: "What does assert do?", live_req.request_id: "live one"}
    a = run.answers[req.request_id]
    assert a.timings_ms["end_to_end_ms"] == pytest.approx(250.0)
    assert a.timings_ms["retriever_queue_ms"] == pytest.approx(210.0)
    assert a.timings_ms["embed_ms"] == 3.0
    assert a.timings_ms["processing_ms"] == pytest.approx(40.0)  # the hour in the topic is not processing
    assert run.replayed == {req.request_id}
    assert a.prompt_tokens == 100 and a.completion_tokens == 20
    assert a.provenance is not None and a.provenance.run_id == "r1"
    assert run.answers[live_req.request_id].timings_ms["end_to_end_ms"] == 80.0  # not replayed: unchanged


def test_run_from_records_counts_a_request_without_request_id_as_undecodable() -> None:
    """Issue 14 #9: evaluate never invents a request id (the question would count as missing forever)."""
    no_id = b'{"schema_version": 1, "query": "What does pass do?"}'
    run = run_from_records("candidate", "topics:x.", [TopicRecord(no_id, None, {})], [])
    assert run.undecodable == 1 and run.queries == {}


def test_answer_from_trace_row_skips_unanswered_rows_and_keeps_dead_letters() -> None:
    rid = uuid.uuid4()
    row = {
        "request_id": rid,
        "query": "q",
        "status": "ok",
        "response_status": "ok",
        "answer": "a",
        "sources": [{"document_id": "d", "chunk_id": "d#1", "score": 0.5}],
        "timings_ms": {"end_to_end_ms": 12.5, "bad": "x"},
        "usage_prompt_tokens": 7,
        "usage_completion_tokens": 3,
        "error_class": None,
    }
    a = answer_from_trace_row(row)
    assert a is not None and a.status == "ok" and a.sources == (SourceRef("d", "d#1", 0.5),)
    assert a.timings_ms == {"end_to_end_ms": 12.5, "processing_ms": 12.5}
    assert a.prompt_tokens == 7 and a.provenance is None
    assert answer_from_trace_row({**row, "response_status": None, "status": "prompted"}) is None
    dl = answer_from_trace_row({**row, "response_status": None, "status": "dead_letter", "error_class": "bad"})
    assert dl is not None and dl.status == "dead_letter"


def test_read_trace_table_connects_through_the_adapter_and_translates_its_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import psycopg

    from workers.adapters import postgres
    from workers.contracts.errors import ServiceUnavailableError
    from workers.evaluation.runs import read_trace_table

    calls: list[tuple[str, float]] = []

    def failing(error: Exception) -> object:
        def connect(url: str, timeout_s: float = 10.0, *, autocommit: bool = False) -> object:
            calls.append((url, timeout_s))
            raise error

        return connect

    with pytest.raises(ConfigError, match="bad trace table name"):
        read_trace_table("postgresql://h/db", "x;drop", "baseline")
    assert calls == []  # rejected before connecting
    monkeypatch.setattr(postgres, "connect", failing(psycopg.OperationalError("connection refused\ndetail")))
    with pytest.raises(ServiceUnavailableError, match="^PostgreSQL not reachable: connection refused$"):
        read_trace_table("postgresql://h/db", "rag_traces", "baseline")
    monkeypatch.setattr(postgres, "connect", failing(psycopg.errors.UndefinedTable("no such table")))
    with pytest.raises(ConfigError, match="trace table 'rag_traces' does not exist"):
        read_trace_table("postgresql://h/db", "rag_traces", "baseline")
    assert calls == [("postgresql://h/db", 10), ("postgresql://h/db", 10)]
