"""Unit tests of the evaluation metrics, joins, gates and report, and of the shadow run's planning (no network)."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from workers.contracts.errors import ConfigError
from workers.contracts.messages import Provenance, Request, Response, Source, Usage
from workers.contracts.serde import encode
from workers.evaluation.evaluate import (
    Answer,
    RunData,
    RunSource,
    SourceRef,
    TopicRecord,
    answer_from_trace_row,
    build_report,
    check_gate,
    compare_runs,
    cosine,
    evaluation_ids,
    jaccard,
    latency_stats,
    load_labels,
    metric_value,
    parse_gate,
    parse_source,
    percentile,
    rates,
    rebase_timings,
    render_html,
    retrieval_metrics,
    run_from_records,
    status_counts,
    summarize,
    write_report,
)
from workers.evaluation.shadow import parse_overrides, plan_shadow, trace_table_name, worker_env
from workers.settings import Settings
from workers.supervisor import process_env


def _ids(n: int) -> list[uuid.UUID]:
    return [uuid.UUID(int=i + 1) for i in range(n)]


def _ans(rid: uuid.UUID, status: str = "ok", docs: tuple[str, ...] = (), **kw: object) -> Answer:
    sources = tuple(SourceRef(d, f"{d}#{i}") for i, d in enumerate(docs))
    return Answer(
        request_id=rid, status=status, answer=kw.pop("answer", "x") if status == "ok" else None, sources=sources, **kw
    )  # type: ignore[arg-type]  # test helper passes the remaining fields


# --------------------------------------------------------------------------- percentiles, summaries


def test_percentile_interpolates_like_numpy() -> None:
    xs = [1.0, 2.0, 3.0, 4.0]
    assert percentile(xs, 0) == 1.0
    assert percentile(xs, 100) == 4.0
    assert percentile(xs, 50) == pytest.approx(2.5)
    assert percentile(xs, 90) == pytest.approx(3.7)
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile(xs, 101)


def test_summarize_and_empty() -> None:
    s = summarize([10.0, 20.0, 30.0])
    assert s["n"] == 3 and s["mean"] == 20.0 and s["p50"] == 20.0 and s["min"] == 10.0 and s["max"] == 30.0
    assert summarize([]) == {"n": 0}


def test_latency_stats_only_ok_and_in_stage_order() -> None:
    a, b, c = _ids(3)
    answers = [
        _ans(a, timings_ms={"end_to_end_ms": 100.0, "embed_ms": 5.0, "zzz_ms": 1.0}),
        _ans(b, timings_ms={"end_to_end_ms": 300.0, "embed_ms": 7.0}),
        _ans(c, status="error", timings_ms={"end_to_end_ms": 99999.0}),
    ]
    st = latency_stats(answers)
    assert list(st) == ["embed_ms", "end_to_end_ms", "zzz_ms"]
    assert st["end_to_end_ms"]["p50"] == 200.0
    assert st["end_to_end_ms"]["max"] == 300.0  # the error's latency is not counted


def test_rebase_only_created_at_stages() -> None:
    t = {"retriever_queue_ms": 5000.0, "end_to_end_ms": 5200.0, "embed_ms": 4.0}
    out = rebase_timings(t, 4900.0)
    assert out == {"retriever_queue_ms": 100.0, "end_to_end_ms": 300.0, "embed_ms": 4.0}
    assert rebase_timings(t, 10_000.0)["end_to_end_ms"] == 0.0
    assert rebase_timings(t, -5.0) == t


# --------------------------------------------------------------------------- counts and rates


def test_status_counts_and_rates() -> None:
    ids = _ids(5)
    answers = {
        ids[0]: _ans(ids[0]),
        ids[1]: _ans(ids[1]),
        ids[2]: _ans(ids[2], status="expired"),
        ids[3]: _ans(ids[3], status="model_unavailable"),
    }
    c = status_counts(ids, answers)
    assert c["total"] == 5 and c["ok"] == 2 and c["expired"] == 1 and c["model_unavailable"] == 1
    assert c["missing"] == 1 and c["error"] == 0
    r = rates(c)
    assert r == {"ok": 0.4, "error": 0.2, "expired": 0.2, "missing": 0.2}
    assert rates(status_counts([], {}))["ok"] == 0.0


# --------------------------------------------------------------------------- retrieval quality


def test_hit_at_k_and_mrr() -> None:
    ids = _ids(4)
    queries = {ids[0]: "Q one", ids[1]: "q  ONE two", ids[2]: "unlabelled", ids[3]: "q three"}
    labels = {"q one": frozenset({"a"}), "q one two": frozenset({"b", "c"}), "q three": frozenset({"z"})}
    answers = {
        ids[0]: _ans(ids[0], docs=("a", "x")),  # rank 1
        ids[1]: _ans(ids[1], docs=("x", "y", "z", "w", "v", "c")),  # rank 6: hit@5 miss, mrr 1/6
        ids[2]: _ans(ids[2], docs=("a",)),  # no label: not counted
        # ids[3] unanswered: a miss
    }
    m = retrieval_metrics(ids, queries, answers, labels)
    assert m["labelled"] == 3
    assert m["hit@1"] == pytest.approx(1 / 3)
    assert m["hit@5"] == pytest.approx(1 / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 6) / 3)
    assert retrieval_metrics(ids, queries, answers, {"nothing": frozenset({"a"})}) == {"labelled": 0}


def test_load_labels(tmp_path: Path) -> None:
    p = tmp_path / "q.jsonl"
    p.write_text('{"q": "What  is X?", "topics": ["x", "y"]}\n\n{"q": "b", "topics": []}\n')
    assert load_labels(p) == {"what is x?": frozenset({"x", "y"}), "b": frozenset()}
    p.write_text('{"question": "no"}\n')
    with pytest.raises(ConfigError, match=":1:"):
        load_labels(p)
    with pytest.raises(ConfigError):
        load_labels(tmp_path / "missing.jsonl")


def test_public_questions_file_parses() -> None:
    path = Path(__file__).resolve().parents[3] / "shared" / "data" / "questions_public.jsonl"
    if not path.exists():
        pytest.skip("no shared questions file")
    assert len(load_labels(path)) == 20


# --------------------------------------------------------------------------- between runs


def test_jaccard_and_cosine() -> None:
    assert jaccard(["a", "b"], ["b", "c"]) == pytest.approx(1 / 3)
    assert jaccard([], []) == 1.0
    assert jaccard(["a"], []) == 0.0
    assert cosine([1.0, 0.0], [1.0, 0.0]) == pytest.approx(1.0)
    assert cosine([1.0, 0.0], [0.0, 2.0]) == pytest.approx(0.0)
    assert cosine([0.0, 0.0], [1.0, 1.0]) == 0.0


def test_compare_runs_joins_by_request_id() -> None:
    ids = _ids(4)
    base = RunData(
        "baseline",
        "b",
        answers={
            ids[0]: _ans(ids[0], docs=("a", "b"), answer="same"),
            ids[1]: _ans(ids[1], docs=("a",), answer="left"),
            ids[2]: _ans(ids[2], status="error"),
        },
    )
    cand = RunData(
        "candidate",
        "c",
        answers={
            ids[0]: _ans(ids[0], docs=("a",), answer="same"),
            ids[1]: _ans(ids[1], docs=("c",), answer="right"),
            ids[2]: _ans(ids[2], docs=("a",)),
            ids[3]: _ans(ids[3], docs=("a",)),  # not in the baseline
        },
    )
    calls: list[list[str]] = []

    def embed(texts: list[str]) -> list[list[float]]:
        calls.append(texts)
        return [[1.0, 0.0] if t in ("same", "left") else [0.0, 1.0] for t in texts]

    summary, per = compare_runs(ids, base, cand, embed)
    assert summary["joined"] == 3 and summary["both_ok"] == 2
    assert calls == [["same", "left", "same", "right"]]
    assert per[ids[0]] == {"chunk_jaccard": 0.5, "document_jaccard": 0.5, "answer_similarity": pytest.approx(1.0)}
    assert per[ids[1]]["answer_similarity"] == pytest.approx(0.0)
    assert summary["answer_similarity"]["mean"] == pytest.approx(0.5)
    assert summary["identical_answers"] == 0.5
    assert summary["document_jaccard"]["mean"] == pytest.approx(0.25)
    no_sim, _ = compare_runs(ids, base, cand, None)
    assert no_sim["answer_similarity"] == {"n": 0}


def test_evaluation_ids_are_the_candidates_requests() -> None:
    ids = _ids(3)
    cand = RunData("candidate", "c", queries={ids[1]: "b", ids[0]: "a"}, answers={ids[2]: _ans(ids[2])})
    assert evaluation_ids(RunData("baseline", ""), cand) == [ids[0], ids[1]]
    only_answers = RunData("candidate", "c", answers={ids[2]: _ans(ids[2])})
    assert evaluation_ids(RunData("baseline", ""), only_answers) == [ids[2]]


# --------------------------------------------------------------------------- gates


def test_parse_gate_forms() -> None:
    g = parse_gate("hit@5:-0.05")
    assert (g.path, g.kind, g.direction, g.amount, g.percent) == ("retrieval.hit@5", "relative", "-", 0.05, False)
    g = parse_gate("latency.end_to_end_ms.p50:+20%")
    assert (g.path, g.direction, g.amount, g.percent) == ("latency_ms.end_to_end_ms.p50", "+", 20.0, True)
    g = parse_gate("compare.answer_similarity.mean>=0.8")
    assert (g.path, g.kind, g.amount) == ("compare.answer_similarity.mean", "min", 0.8)
    g = parse_gate("error_rate<=0.01")
    assert (g.path, g.kind, g.amount) == ("rates.error", "max", 0.01)
    assert parse_gate("mrr:-5%").path == "retrieval.mrr"
    for bad in ("hit@5", "hit@5:0.05", "hit@5:-x", "hit@5>0.5", "compare.answer_similarity.mean:-0.1", ""):
        with pytest.raises(ConfigError):
            parse_gate(bad)


def test_check_gate_relative_and_bounds() -> None:
    base = {"retrieval": {"hit@5": 0.9}, "latency_ms": {"end_to_end_ms": {"p50": 1000.0}}}
    cand = {"retrieval": {"hit@5": 0.84}, "latency_ms": {"end_to_end_ms": {"p50": 1150.0}}}
    cmp_ = {"answer_similarity": {"mean": 0.7}}
    assert not check_gate(parse_gate("hit@5:-0.05"), base, cand, cmp_)["passed"]
    assert check_gate(parse_gate("hit@5:-0.07"), base, cand, cmp_)["passed"]
    r = check_gate(parse_gate("latency.end_to_end_ms.p50:+20%"), base, cand, cmp_)
    assert r["passed"] and r["limit"] == pytest.approx(1200.0)
    assert not check_gate(parse_gate("latency.end_to_end_ms.p50:+10%"), base, cand, cmp_)["passed"]
    assert check_gate(parse_gate("compare.answer_similarity.mean>=0.7"), base, cand, cmp_)["passed"]
    assert not check_gate(parse_gate("compare.answer_similarity.mean>=0.71"), base, cand, cmp_)["passed"]
    assert not check_gate(parse_gate("hit@5>=1.01"), base, cand, cmp_)["passed"]
    assert check_gate(parse_gate("hit@5<=0.84"), base, cand, cmp_)["passed"]
    missing = check_gate(parse_gate("hit@1:-0.1"), base, cand, cmp_)
    assert not missing["passed"] and missing["reason"] == "metric not available"


def test_metric_value() -> None:
    sec = {"a": {"b": 2, "flag": True, "s": "x"}}
    assert metric_value(sec, "a.b") == 2.0
    assert metric_value(sec, "a.flag") is None
    assert metric_value(sec, "a.s") is None
    assert metric_value(sec, "a.c") is None


# --------------------------------------------------------------------------- sources and records


def test_parse_source() -> None:
    assert parse_source("live", "t1.") == RunSource("topics", "t1.")
    assert parse_source("run:k3") == RunSource("topics", "rag.eval.k3.")
    assert parse_source("topics:foo.") == RunSource("topics", "foo.")
    assert parse_source("table:rag_traces") == RunSource("table", "rag_traces")
    assert str(parse_source("run:k3")) == "topics:rag.eval.k3."
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
    assert a.prompt_tokens == 100 and a.completion_tokens == 20
    assert a.provenance is not None and a.provenance.run_id == "r1"
    assert run.answers[live_req.request_id].timings_ms["end_to_end_ms"] == 80.0  # not replayed: unchanged


def test_answer_from_trace_row() -> None:
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
    assert a.timings_ms == {"end_to_end_ms": 12.5} and a.prompt_tokens == 7 and a.provenance is None
    assert answer_from_trace_row({**row, "response_status": None, "status": "prompted"}) is None
    dl = answer_from_trace_row({**row, "response_status": None, "status": "dead_letter", "error_class": "bad"})
    assert dl is not None and dl.status == "dead_letter"


# --------------------------------------------------------------------------- report


def _runs() -> tuple[RunData, RunData]:
    ids = _ids(6)
    queries = {rid: f"question {i}" for i, rid in enumerate(ids)}
    prov_b = Provenance(top_k=5, template_id="default", template_hash="aaa")
    prov_c = Provenance(top_k=3, template_id="concise", template_hash="bbb", run_id="r1")
    base = RunData("baseline", "topics:t.", queries=dict(queries))
    cand = RunData("candidate", "topics:rag.eval.r1.", queries=dict(queries))
    for i, rid in enumerate(ids):
        base.answers[rid] = _ans(
            rid,
            docs=("d0", "d1", "d2", "d3", "d4"),
            timings_ms={"end_to_end_ms": 100.0 + i * 10, "embed_ms": 2.0},
            prompt_tokens=500,
            completion_tokens=24,
            provenance=prov_b,
        )
        if i < 5:
            cand.answers[rid] = _ans(
                rid,
                status="ok" if i < 4 else "expired",
                docs=("d0", "d1", "d2"),
                timings_ms={"end_to_end_ms": 90.0 + i * 10, "embed_ms": 2.0},
                prompt_tokens=300,
                completion_tokens=20,
                provenance=prov_c,
            )
    return base, cand


def test_build_report_json_and_html(tmp_path: Path) -> None:
    base, cand = _runs()
    labels = {f"question {i}": frozenset({"d3"}) for i in range(6)}
    report = build_report(
        base,
        cand,
        labels=labels,
        embed=lambda ts: [[1.0, float(len(t))] for t in ts],
        gates=[parse_gate("hit@5:-0.05"), parse_gate("error_rate<=0.5")],
        labels_path="q.jsonl",
    )
    b, c = report["baseline"], report["candidate"]
    assert report["requests_compared"] == 6
    assert b["retrieval"]["hit@5"] == 1.0 and c["retrieval"]["hit@5"] == 0.0
    assert b["retrieval"]["mrr"] == pytest.approx(0.25)
    assert c["counts"]["expired"] == 1 and c["counts"]["missing"] == 1
    assert c["rates"]["expired"] == pytest.approx(1 / 6)
    assert b["latency_ms"]["end_to_end_ms"]["p50"] == pytest.approx(125.0)
    assert c["tokens"]["prompt"]["mean"] == 300.0
    assert b["provenance"][0]["provenance"]["template_id"] == "default"
    assert c["provenance"][0]["answers"] == 5 and "run_id" not in c["provenance"][0]["provenance"]
    assert c["replay_runs"] == ["r1"]
    assert report["compare"]["both_ok"] == 4
    assert report["compare"]["chunk_jaccard"]["mean"] == pytest.approx(0.6)
    assert [g["passed"] for g in report["gates"]] == [False, True]
    assert report["passed"] is False
    json.dumps(report)  # JSON-ready

    page = render_html(report)
    assert page.count("<svg") >= 5
    assert "FAIL: 1 of 2 gates regressed" in page
    # Nothing fetched: no external resources, only the SVG namespace URI.
    urls = set(re.findall(r"https?://[^\s\"'<>]+", page))
    assert urls <= {"http://www.w3.org/2000/svg"}
    assert "<script" not in page and "<link" not in page and "<img" not in page
    jp, hp = write_report(report, tmp_path / "out")
    assert json.loads(jp.read_text())["schema"] == "ragstream.evaluation/1"
    assert hp.read_text().startswith("<!DOCTYPE html>")


def test_html_escapes_user_text() -> None:
    base, cand = _runs()
    rid = next(iter(cand.queries))
    cand.queries[rid] = "<script>alert(1)</script>"
    page = render_html(build_report(base, cand))
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_report_without_answers_still_renders() -> None:
    ids = _ids(2)
    base = RunData("baseline", "b")
    cand = RunData("candidate", "c", queries={ids[0]: "a", ids[1]: "b"})
    report = build_report(base, cand, gates=[parse_gate("latency.end_to_end_ms.p50:+10%")])
    assert report["candidate"]["counts"]["missing"] == 2
    assert report["passed"] is False
    assert "<svg" in render_html(report)


# --------------------------------------------------------------------------- shadow planning


def test_parse_overrides_validates() -> None:
    s = Settings()
    assert parse_overrides(["retriever.top_k=3", "retriever.template=concise", "llm.url=http://h:1"], s) == {
        "RAG_RETRIEVER__TOP_K": "3",
        "RAG_RETRIEVER__TEMPLATE": "concise",
        "RAG_LLM__URL": "http://h:1",
    }
    for bad in (
        "retriever.top_k=three",
        "retriever.nope=1",
        "nosuch.x=1",
        "top_k=3",
        "topics.prefix=x",
        "topics.requests=rag.requests",
        "worker.group_id=retriever",
        "monitor.app_id=monitor",
    ):
        with pytest.raises(ConfigError):
            parse_overrides([bad], s)


def test_plan_shadow_never_points_at_live_topics_or_groups() -> None:
    s = Settings()
    plan = plan_shadow(s, "k3-concise", ["retriever.top_k=3", "retriever.template=concise"])
    assert plan.prefix == "rag.eval.k3-concise."
    assert plan.trace_table == "rag_traces_eval_k3_concise" == trace_table_name("k3-concise")
    assert plan.env["RAG_TOPICS__PREFIX"] == "rag.eval.k3-concise."
    assert plan.env["RAG_MONITOR__APP_ID"] == "rag.eval.k3-concise.monitor"
    assert plan.env["RAG_RETRIEVER__TOP_K"] == "3"
    if "generator" in Settings.model_fields:  # the generator's answer store is keyed by request id
        assert plan.env["RAG_GENERATOR__ANSWER_TABLE"] == "rag_answers_eval_k3_concise"
    base = {
        "RAG_WORKER__GROUP_ID": "retriever",
        "RAG_MONITOR__APP_ID": "monitor",
        "HF_HUB_OFFLINE": "1",
        "RAG_TOPICS__PREFIX": "",
        "PATH": "/bin",
    }
    r = process_env(worker_env(base, plan), "retriever")
    g = process_env(worker_env(base, plan), "generator")
    assert "RAG_WORKER__GROUP_ID" not in r and "RAG_WORKER__GROUP_ID" not in g
    assert r["HF_HUB_OFFLINE"] == "1" and "HF_HUB_OFFLINE" not in g
    assert g["RAG_TOPICS__PREFIX"] == "rag.eval.k3-concise." and g["PATH"] == "/bin"
    assert g["RAG_MONITOR__APP_ID"] == "rag.eval.k3-concise.monitor"
    no_mon = plan_shadow(s, "r2", monitor=False)
    assert no_mon.workers == ("retriever", "generator") and no_mon.trace_table is None
    with pytest.raises(ConfigError):
        plan_shadow(s, "bad name")
    with pytest.raises(ConfigError):
        plan_shadow(Settings(topics={"prefix": "rag.eval.x."}), "x")  # type: ignore[arg-type]
