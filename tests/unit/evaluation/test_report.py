"""The typed report: what build_report puts in it, the JSON it writes (keys unchanged) and the offline HTML."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import pytest

from workers.evaluation.gates import parse_gate
from workers.evaluation.models import Report
from workers.evaluation.render import render_html
from workers.evaluation.report import build_report, write_report
from workers.evaluation.runs import RunData

from .cases import make_ids, two_runs

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
    assert j["compare"]["chunk_jaccard"]["mean"] == pytest.approx(0.6)
    assert [g["passed"] for g in j["gates"]] == [False, True]
    assert j["passed"] is False
    json.dumps(j)  # JSON-ready
    # the typed model says the same
    assert report.candidate.retrieval.hit_at_5 == 0.0 and report.baseline.retrieval.mrr == pytest.approx(0.25)
    assert report.candidate.rates.expired == pytest.approx(1 / 6) and report.compare.both_ok == 4
    assert [g.passed for g in report.gates] == [False, True] and report.passed is False

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
            "counts",
            "duplicates",
            "undecodable",
            "rates",
            "latency_ms",
            "tokens",
            "retrieval",
            "provenance",
        ]
        assert list(sec["counts"]) == [
            "total", "ok", "error", "model_unavailable", "dead_letter", "expired", "missing", "rejected", "no_context",
        ]  # fmt: skip
        assert list(sec["rates"]) == ["ok", "error", "expired", "missing", "no_context"]
        assert list(sec["latency_ms"]) == ["embed_ms", "end_to_end_ms"]
        assert all(list(s) == summary_keys for s in sec["latency_ms"].values())
        assert list(sec["tokens"]) == ["prompt", "completion"]
        assert all(list(s) == [*summary_keys, "total"] for s in sec["tokens"].values())
        assert list(sec["retrieval"]) == ["hit@1", "hit@5", "mrr", "labelled"]
        assert [list(p) for p in sec["provenance"]] == [["answers", "provenance"]]
    assert list(j["compare"]) == [
        "joined",
        "both_ok",
        "chunk_jaccard",
        "document_jaccard",
        "identical_answers",
        "answer_similarity",
    ]
    assert all(
        list(j["compare"][k]) == summary_keys for k in ("chunk_jaccard", "document_jaccard", "answer_similarity")
    )
    assert [list(g) for g in j["gates"]] == [["gate", "metric", "baseline", "candidate", "limit", "passed", "reason"]]
    both_ok = ["chunk_jaccard", "document_jaccard", "answer_similarity"]
    answer_keys = ["status", "end_to_end_ms", "documents", "first_hit_rank", "completion_tokens"]
    for row in j["requests"]:
        ok = row["baseline"]["status"] == "ok" and row["candidate"]["status"] == "ok"
        assert list(row) == ["request_id", "query", "baseline", "candidate", *(both_ok if ok else [])]
        assert list(row["baseline"]) == answer_keys and list(row["candidate"]) == answer_keys
    missing = next(r["candidate"] for r in j["requests"] if r["candidate"]["status"] == "missing")
    assert missing == {
        "status": "missing",
        "end_to_end_ms": None,
        "documents": [],
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
        "chunk_jaccard": {"n": 0},
        "document_jaccard": {"n": 0},
        "identical_answers": 0.0,
        "answer_similarity": {"n": 0},
    }
    assert j["requests"] == [
        {
            "request_id": str(ids[0]),
            "query": "a",
            "baseline": {
                "status": "missing",
                "end_to_end_ms": None,
                "documents": [],
                "first_hit_rank": None,
                "completion_tokens": 0,
            },
            "candidate": {
                "status": "missing",
                "end_to_end_ms": None,
                "documents": [],
                "first_hit_rank": None,
                "completion_tokens": 0,
            },
        }
    ]
    assert Report.model_validate(j) == report  # the JSON form reads back into the same model


def test_html_escapes_user_text() -> None:
    base, cand = two_runs()
    rid = next(iter(cand.queries))
    cand.queries[rid] = "<script>alert(1)</script>"
    page = render_html(build_report(base, cand))
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_report_without_answers_counts_them_missing_fails_its_gates_and_still_renders() -> None:
    ids = make_ids(2)
    base = RunData("baseline", "b")
    cand = RunData("candidate", "c", queries={ids[0]: "a", ids[1]: "b"})
    report = build_report(base, cand, gates=[parse_gate("latency.end_to_end_ms.p50:+10%")])
    assert report.candidate.counts["missing"] == 2
    assert report.passed is False
    assert "<svg" in render_html(report)
