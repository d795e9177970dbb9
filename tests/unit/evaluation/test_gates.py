"""Release gates: parsing the two forms, checking them, and resolving metric paths in the report sections."""

from __future__ import annotations

import pytest

from workers.contracts.errors import ConfigError
from workers.evaluation.gates import check_gate, metric_catalog, metric_value, parse_gate, resolve_metric
from workers.evaluation.report import build_report

from .cases import two_runs


def test_parse_gate_accepts_relative_and_bound_forms_and_short_names() -> None:
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


def test_check_gate_relative_and_bound_gates_and_a_missing_metric_fails() -> None:
    base = {"retrieval": {"hit@5": 0.9}, "latency_ms": {"end_to_end_ms": {"p50": 1000.0}}}
    cand = {"retrieval": {"hit@5": 0.84}, "latency_ms": {"end_to_end_ms": {"p50": 1150.0}}}
    cmp_ = {"answer_similarity": {"mean": 0.7}}
    assert not check_gate(parse_gate("hit@5:-0.05"), base, cand, cmp_).passed
    assert check_gate(parse_gate("hit@5:-0.07"), base, cand, cmp_).passed
    r = check_gate(parse_gate("latency.end_to_end_ms.p50:+20%"), base, cand, cmp_)
    assert r.passed and r.limit == pytest.approx(1200.0)
    assert not check_gate(parse_gate("latency.end_to_end_ms.p50:+10%"), base, cand, cmp_).passed
    assert check_gate(parse_gate("compare.answer_similarity.mean>=0.7"), base, cand, cmp_).passed
    assert not check_gate(parse_gate("compare.answer_similarity.mean>=0.71"), base, cand, cmp_).passed
    assert not check_gate(parse_gate("hit@5>=1.01"), base, cand, cmp_).passed
    assert check_gate(parse_gate("hit@5<=0.84"), base, cand, cmp_).passed
    missing = check_gate(parse_gate("hit@1:-0.1"), base, cand, cmp_)
    assert not missing.passed and missing.reason == "metric not available"


def test_metric_value_returns_only_numbers_at_a_dotted_path() -> None:
    sec = {"a": {"b": 2, "flag": True, "s": "x"}}
    assert metric_value(sec, "a.b") == 2.0
    assert metric_value(sec, "a.flag") is None
    assert metric_value(sec, "a.s") is None
    assert metric_value(sec, "a.c") is None


def test_gate_paths_resolve_by_json_key_in_the_typed_report_sections() -> None:
    base, cand = two_runs()
    labels = {f"question {i}": frozenset({"d3"}) for i in range(6)}
    report = build_report(base, cand, labels=labels, embed=lambda ts: [[1.0, float(len(t))] for t in ts])
    b, c, cmp_ = report.baseline, report.candidate, report.compare
    assert metric_value(b, "retrieval.hit@5") == 1.0 and metric_value(c, "retrieval.hit@5") == 0.0
    assert metric_value(c, "retrieval.hit_at_5") is None  # JSON keys, not Python field names
    assert metric_value(b, "latency_ms.end_to_end_ms.p99") == b.latency_ms["end_to_end_ms"].p99
    assert metric_value(c, "rates.expired") == pytest.approx(1 / 6)
    assert metric_value(c, "counts.missing") == 1.0
    assert metric_value(cmp_, "answer_similarity.mean") == cmp_.answer_similarity.mean
    assert metric_value(c, "latency_ms.llm_total_ms.p50") is None  # no such stage
    assert metric_value(c, "label") is None  # not a number
    r = check_gate(parse_gate("latency.end_to_end_ms.p99:+10%"), b, c, cmp_)
    assert r.baseline == b.latency_ms["end_to_end_ms"].p99 and r.candidate == c.latency_ms["end_to_end_ms"].p99
    assert r.passed
    assert not check_gate(parse_gate("expiry_rate<=0.1"), b, c, cmp_).passed
    assert check_gate(parse_gate("compare.answer_similarity.mean>=0"), b, c, cmp_).candidate is not None


def test_every_gate_form_survives_an_unquoted_shell_and_the_old_forms_still_parse() -> None:
    forms = {
        "error_rate:max=0.01": ("rates.error", "max", 0.01),
        "hit@5:min=0.9": ("retrieval.hit@5", "min", 0.9),
        "compare.answer_similarity.mean:min=0.8": ("compare.answer_similarity.mean", "min", 0.8),
        "latency.p50:max=2500": ("latency_ms.processing_ms.p50", "max", 2500.0),
        "error_rate<=0.01": ("rates.error", "max", 0.01),  # quoted in a shell, as before
        "hit@5>=0.9": ("retrieval.hit@5", "min", 0.9),
    }
    for spec, (path, kind, amount) in forms.items():
        g = parse_gate(spec)
        assert (g.path, g.kind, g.amount) == (path, kind, amount), spec
    for spec in ("error_rate:max=0.01", "hit@5:min=0.9", "hit@5:-0.05", "latency.p50:+20%"):
        assert not set(spec) & set("<>|;&$`'\"() *?[]"), spec  # nothing a shell would act on
    assert parse_gate("latency.p50:+20%").path == "latency_ms.processing_ms.p50"  # queue time left out


def test_unknown_metrics_fail_with_the_valid_names() -> None:
    for bad in ("hit@10:-0.1", "latency.e2e.p50:+20%", "latency_ms.end_to_end_ms.p42:+1", "rates.nope:max=1"):
        with pytest.raises(ConfigError, match="valid names") as info:
            parse_gate(bad)
        assert "hit@5" in str(info.value) and "processing_ms" in str(info.value)
    with pytest.raises(ConfigError, match="shell"):
        parse_gate("error_rate=0.01")  # what `error_rate<=0.01` becomes unquoted in bash
    assert resolve_metric("latency.end_to_end_ms.p99") == "latency_ms.end_to_end_ms.p99"
    catalog = metric_catalog()
    assert "compare.chunk_overlap.mean" in catalog and "retrieval.hit@5" in catalog
    assert len(catalog) == len(set(catalog))


def test_gate_reasons_print_numbers_for_people_and_note_queue_time_of_replayed_traffic() -> None:
    base = {"latency_ms": {"end_to_end_ms": {"p50": 9600.0}}}
    cand = {"latency_ms": {"end_to_end_ms": {"p50": 24650.0}}}
    r = check_gate(parse_gate("latency.end_to_end_ms.p50:+20%"), base, cand, {}, ["end_to_end_ms"])
    assert not r.passed
    assert r.reason == "candidate 24,650 above limit 11,520 (baseline 9,600, +156.8%)"
    assert r.note is not None and "not comparable" in r.note and "latency.p50" in r.note
    assert check_gate(parse_gate("latency.end_to_end_ms.p50:+20%"), base, cand, {}).note is None
