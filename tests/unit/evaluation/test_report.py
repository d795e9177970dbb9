"""The typed report: what build_report puts in it, the JSON it writes (keys unchanged) and the offline HTML."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest

from workers.evaluation.gates import parse_gate
from workers.evaluation.models import Report
from workers.evaluation.render import render_html
from workers.evaluation.report import build_report, write_report
from workers.evaluation.runs import RunData

from .cases import make_answer, make_ids, two_runs

LABELS = {f"question {i}": frozenset({"d3"}) for i in range(6)}


def _embed(texts: list[str]) -> list[list[float]]:
    return [[1.0, float(len(t))] for t in texts]


def test_build_report_holds_both_runs_compare_and_gates_and_renders_offline_html(tmp_path: Path) -> None:
    base, cand = two_runs()
    report = build_report(
        base,
        cand,
        labels=LABELS,
        embed=_embed,
        gates=[parse_gate("hit@5:-0.05"), parse_gate("error_rate<=0.5")],
        labels_path="q.jsonl",
    )
    j = report.as_json()
    b, c = j["baseline"], j["candidate"]
    assert j["requests_compared"] == 6
    assert b["retrieval"]["hit@5"] == 1.0 and c["retrieval"]["hit@5"] == 0.0
    assert b["retrieval"]["mrr"] == pytest.approx(0.25)
    assert c["counts"]["expired"] == 1 and c["counts"]["missing"] == 1
    assert c["rates"]["expired"] == pytest.approx(1 / 6)
    assert b["latency_ms"]["end_to_end_ms"]["p50"] == pytest.approx(125.0)
    assert c["tokens"]["prompt"]["mean"] == 300.0
    assert b["provenance"][0]["provenance"]["template_id"] == "default"
    assert c["provenance"][0]["answers"] == 5 and "run_id" not in c["provenance"][0]["provenance"]
    assert c["replay_runs"] == ["r1"]
    assert j["compare"]["both_ok"] == 4
    assert j["compare"]["chunk_overlap"]["mean"] == 1.0  # k=3 sources all among the k=5: a perfect subset
    assert [g["passed"] for g in j["gates"]] == [False, True]
    assert j["passed"] is False
    json.dumps(j)  # JSON-ready
    # the typed model says the same
    assert report.candidate.retrieval.hit_at_5 == 0.0 and report.baseline.retrieval.mrr == pytest.approx(0.25)
    assert report.candidate.rates.expired == pytest.approx(1 / 6) and report.compare.both_ok == 4
    assert [g.passed for g in report.gates] == [False, True] and report.passed is False

    page = render_html(report)
    assert page.count("<svg") >= 5
    assert "FAIL: 1 of 2 gates failed" in page
    # Nothing fetched: no external resources, only the SVG namespace URI; the one script is inline.
    urls = set(re.findall(r"https?://[^\s\"'<>]+", page))
    assert urls <= {"http://www.w3.org/2000/svg"}
    assert page.count("<script>") == 1 and "<script src" not in page and "<link" not in page and "<img" not in page
    jp, hp = write_report(report, tmp_path / "out")
    assert json.loads(jp.read_text())["schema"] == "ragstream.evaluation/1"
    assert hp.read_text().startswith("<!DOCTYPE html>")


def test_report_json_keeps_every_key_name_and_order(tmp_path: Path) -> None:
    base, cand = two_runs()
    report = build_report(base, cand, labels=LABELS, embed=_embed, gates=[parse_gate("mrr:-5%")], labels_path="q")
    jp, _ = write_report(report, tmp_path)
    j = json.loads(jp.read_text())
    assert j == report.as_json() | {"generated_at": report.generated_at.isoformat()}
    assert list(j) == [
        "schema",
        "generated_at",
        "labels",
        "requests_compared",
        "baseline",
        "candidate",
        "compare",
        "gates",
        "passed",
        "latency_not_comparable",
        "requests",
    ]
    assert j["schema"] == "ragstream.evaluation/1" and j["labels"] == "q"
    assert datetime.fromisoformat(j["generated_at"]) == report.generated_at
    assert j["generated_at"].endswith("+00:00")
    summary_keys = ["n", "mean", "min", "p50", "p90", "p99", "max"]
    for sec in (j["baseline"], j["candidate"]):
        assert list(sec) == [
            "label",
            "source",
            "replay_runs",
            "replayed",
            "counts",
            "duplicates",
            "undecodable",
            "rates",
            "latency_ms",
            "tokens",
            "retrieval",
            "citations",
            "provenance",
        ]
        assert list(sec["counts"]) == [
            "total", "ok", "error", "model_unavailable", "dead_letter", "expired", "missing", "rejected", "no_context",
        ]  # fmt: skip
        assert list(sec["rates"]) == ["ok", "error", "expired", "missing", "no_context"]
        assert list(sec["latency_ms"]) == ["embed_ms", "processing_ms", "end_to_end_ms"]
        assert all(list(s) == summary_keys for s in sec["latency_ms"].values())
        assert list(sec["tokens"]) == ["prompt", "completion"]
        assert all(list(s) == [*summary_keys, "total"] for s in sec["tokens"].values())
        assert list(sec["retrieval"]) == ["hit@1", "hit@5", "mrr", "labelled", "sources_k"]
        assert [list(p) for p in sec["provenance"]] == [["answers", "provenance"]]
    assert list(j["compare"]) == [
        "joined",
        "both_ok",
        "chunk_overlap",
        "document_overlap",
        "identical_answers",
        "answer_similarity",
    ]
    assert all(
        list(j["compare"][k]) == summary_keys for k in ("chunk_overlap", "document_overlap", "answer_similarity")
    )
    assert [list(g) for g in j["gates"]] == [["gate", "metric", "baseline", "candidate", "limit", "passed", "reason"]]
    both_ok = ["chunk_overlap", "document_overlap", "answer_similarity"]
    answer_keys = [
        "status",
        "answer",
        "end_to_end_ms",
        "processing_ms",
        "sources",
        "first_hit_rank",
        "completion_tokens",
    ]
    for row in j["requests"]:
        ok = row["baseline"]["status"] == "ok" and row["candidate"]["status"] == "ok"
        keys = ["request_id", "query", "baseline", "candidate", "relevant", "changed", *(both_ok if ok else [])]
        assert list(row) == keys
        assert list(row["baseline"]) == answer_keys
        assert list(row["candidate"]) == answer_keys or row["candidate"]["status"] != "ok"
        assert all(list(src) == ["document_id", "chunk_id", "score"] for src in row["baseline"]["sources"])
    missing = next(r["candidate"] for r in j["requests"] if r["candidate"]["status"] == "missing")
    assert missing == {
        "status": "missing",
        "answer": None,
        "end_to_end_ms": None,
        "processing_ms": None,
        "sources": [],
        "first_hit_rank": None,
        "completion_tokens": 0,
    }


def test_report_json_leaves_out_unknown_metrics_but_keeps_nulls() -> None:
    ids = make_ids(2)
    report = build_report(RunData("baseline", "b"), RunData("candidate", "c", queries={ids[0]: "a"}))
    j = report.as_json()
    assert j["labels"] is None and j["gates"] == [] and j["passed"] is True
    c = j["candidate"]
    assert c["retrieval"] == {"labelled": 0} and c["latency_ms"] == {} and c["provenance"] == []
    assert c["tokens"] == {"prompt": {"n": 0, "total": 0.0}, "completion": {"n": 0, "total": 0.0}}
    assert j["compare"] == {
        "joined": 0,
        "both_ok": 0,
        "chunk_overlap": {"n": 0},
        "document_overlap": {"n": 0},
        "identical_answers": 0.0,
        "answer_similarity": {"n": 0},
    }
    nothing = {
        "status": "missing",
        "answer": None,
        "end_to_end_ms": None,
        "processing_ms": None,
        "sources": [],
        "first_hit_rank": None,
        "completion_tokens": 0,
    }
    assert j["requests"] == [
        {
            "request_id": str(ids[0]),
            "query": "a",
            "baseline": nothing,
            "candidate": nothing,
            "relevant": [],
            "changed": [],
        }
    ]
    assert Report.model_validate(j) == report  # the JSON form reads back into the same model


def test_html_escapes_user_text() -> None:
    base, cand = two_runs()
    rid = next(iter(cand.queries))
    cand.queries[rid] = "<script>alert(1)</script>"
    page = render_html(build_report(base, cand))
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_report_without_answers_counts_them_missing_fails_its_gates_and_still_renders() -> None:
    ids = make_ids(2)
    base = RunData("baseline", "b")
    cand = RunData("candidate", "c", queries={ids[0]: "a", ids[1]: "b"})
    report = build_report(base, cand, gates=[parse_gate("latency.end_to_end_ms.p50:+10%")])
    assert report.candidate.counts["missing"] == 2
    assert report.passed is False
    assert "<svg" in render_html(report)


def test_answers_side_by_side_changed_first_with_sources_and_a_sortable_filterable_table() -> None:
    base, cand = two_runs()
    base.source, cand.source = "live", "run:r1"
    report = build_report(base, cand, labels=LABELS, embed=_embed, labels_path="q.jsonl")
    rows = report.requests
    # the candidate lost the hit on every answered request (3 sources, d3 was the 4th) and two statuses changed
    assert all(r.changed for r in rows)
    ok_row = next(r for r in rows if r.candidate.status == "ok")
    assert ok_row.baseline.answer == "x" and [s.document_id for s in ok_row.baseline.sources][:2] == ["d0", "d1"]
    assert ok_row.relevant == ["d3"] and ok_row.chunk_overlap == 1.0
    page = render_html(report)
    table = page[page.index("<table id='answers'>") :]
    assert table.count("<tr class='changed'") == 6
    assert "q.jsonl" in page and "question 0" in table and "d3 0.00" in table  # question, sources with scores
    assert "id='answers-filter'" in page and "id='answers-show'" in page and "th data-k='n'" in table
    assert "<span class='b'>baseline</span> live" in page  # the live baseline is called live


def test_unchanged_requests_come_after_changed_ones() -> None:
    ids = make_ids(3)
    queries = {rid: f"question {i}" for i, rid in enumerate(ids)}
    base = RunData("baseline", "live", queries=dict(queries))
    cand = RunData("candidate", "run:r", queries=dict(queries))
    for i, rid in enumerate(ids):
        base.answers[rid] = make_answer(rid, docs=("d0",))
        cand.answers[rid] = make_answer(rid, status="error", docs=()) if i == 2 else make_answer(rid, docs=("d0",))
    report = build_report(base, cand, labels={q: frozenset({"d0"}) for q in queries.values()})
    assert [r.query for r in report.requests] == ["question 2", "question 0", "question 1"]
    assert [r.changed for r in report.requests] == [["status", "hit"], [], []]


def test_page_prints_numbers_for_people_round_ticks_and_says_what_compares() -> None:
    base, cand = two_runs()
    for run, scale in ((base, 100.0), (cand, 250.0)):
        for rid, a in list(run.answers.items()):
            t = {"end_to_end_ms": a.timings_ms["end_to_end_ms"] * scale, "retriever_queue_ms": 18_000.0}
            run.answers[rid] = replace(a, timings_ms=t)
    cand.replayed = set(cand.queries)
    gates = [parse_gate("latency.end_to_end_ms.p50:+20%")]
    report = build_report(base, cand, labels=LABELS, gates=gates, labels_path="q.jsonl")
    assert report.latency_not_comparable == ["retriever_queue_ms", "end_to_end_ms"]
    assert report.gates[0].note is not None
    page = render_html(report)
    assert not re.search(r"\d\.\d+e[+-]\d", page), "scientific notation in the page"
    assert "Not comparable (*): retriever_queue_ms, end_to_end_ms" in page
    assert "processing_ms is end to end minus the queue waits" in page
    assert "6 of 6 requests matched a labelled question" in page
    assert "its hit@5 is hit@3, capped by k" in page
    assert "share of the smaller set found in the larger" in page
    # axis ticks of the CDFs: round numbers only
    ticks = [float(t.replace(",", "")) for t in re.findall(r'fill="#555">([0-9][0-9,.]*)</text>', page)]
    assert len(ticks) > 20 and all(len(f"{t:g}".replace(".", "").strip("0")) <= 2 for t in ticks), ticks
    assert re.search(r"\+\d[\d,]* \(\+\d+\.\d%\)", page)  # Δ absolute and percent
