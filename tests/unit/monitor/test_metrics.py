"""The monitor's metrics bundle (workers.monitor.metrics): names, buckets, counting from batch results."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from workers.monitor.metrics import LATENCY_BUCKETS_S, build_metrics
from workers.monitor.trace import STAGES, BatchResult, ErrorRecord, KafkaCoords, TraceChange


def _value(reg: CollectorRegistry, name: str, **labels: str) -> float:
    v = reg.get_sample_value(name, labels or None)
    return 0.0 if v is None else v


def _error(kind: str = "dead_letter", topic: str = "rag.prompts") -> ErrorRecord:
    return ErrorRecord(
        kind=kind,  # type: ignore[arg-type]  # literal given as str
        source_topic=topic,
        source_partition=0,
        source_offset=1,
        stage="generator" if kind == "dead_letter" else "monitor",
        error_class="x",
        error_message="m",
        request_id=None,
        seen=KafkaCoords(topic, 0, 1),
        value_b64=None,
    )


def test_names_and_prefix() -> None:
    reg = CollectorRegistry()
    build_metrics(reg, prefix="shadow_monitor")
    text = generate_latest(reg).decode()
    for name in (
        "shadow_monitor_requests_total",
        "shadow_monitor_prompts_total",
        "# TYPE shadow_monitor_answers_total counter",
        "# TYPE shadow_monitor_errors_total counter",
        "# TYPE shadow_monitor_dead_letters_total counter",
        "# TYPE shadow_monitor_bad_messages_total counter",
        "# TYPE shadow_monitor_stage_latency_seconds histogram",
        "shadow_monitor_requests_in_flight",
        "shadow_monitor_requests_past_deadline",
    ):
        assert name in text
    for stage in STAGES:
        assert f'shadow_monitor_stage_latency_seconds_count{{stage="{stage}"}} 0.0' in text


def test_latency_buckets_span_1ms_to_60s() -> None:
    assert LATENCY_BUCKETS_S[0] == 0.001 and LATENCY_BUCKETS_S[-1] == 60.0
    assert list(LATENCY_BUCKETS_S) == sorted(LATENCY_BUCKETS_S)
    reg = CollectorRegistry()
    build_metrics(reg)
    assert (
        reg.get_sample_value("ragstream_monitor_stage_latency_seconds_bucket", {"stage": "llm_total", "le": "60.0"})
        == 0
    )


def test_record_counts_changes_only() -> None:
    reg = CollectorRegistry()
    m = build_metrics(reg)
    rid = uuid.uuid4()
    result = BatchResult(
        changes=[
            TraceChange(
                rid,
                new_kinds=frozenset({"request", "prompt", "response"}),
                status="ok",
                latencies_s={"llm_total": 0.5, "end_to_end": 1.5},
            ),
            TraceChange(uuid.uuid4(), new_kinds=frozenset({"dead_letter"}), error=("prompt_too_large", "retriever")),
        ],
        errors_inserted=[_error("dead_letter"), _error("bad_message", "p.rag.responses")],
    )
    m.record(result, topic_kinds={"p.rag.responses": "responses"})
    m.record(BatchResult())  # a batch of redeliveries: nothing changed, nothing counted
    assert _value(reg, "ragstream_monitor_requests_total") == 1
    assert _value(reg, "ragstream_monitor_prompts_total") == 1
    assert _value(reg, "ragstream_monitor_answers_total", status="ok") == 1
    assert _value(reg, "ragstream_monitor_errors_total", error_class="prompt_too_large", stage="retriever") == 1
    assert _value(reg, "ragstream_monitor_dead_letters_total", stage="generator", error_class="x") == 1
    assert _value(reg, "ragstream_monitor_bad_messages_total", topic_kind="responses", error_class="x") == 1
    assert _value(reg, "ragstream_monitor_stage_latency_seconds_count", stage="end_to_end") == 1
    assert _value(reg, "ragstream_monitor_stage_latency_seconds_sum", stage="llm_total") == pytest.approx(0.5)
    assert _value(reg, "ragstream_monitor_stage_latency_seconds_bucket", stage="llm_total", le="0.25") == 0
    assert _value(reg, "ragstream_monitor_stage_latency_seconds_bucket", stage="llm_total", le="0.5") == 1


def test_two_bundles_need_two_registries() -> None:
    reg = CollectorRegistry()
    build_metrics(reg)
    build_metrics(CollectorRegistry())
    with pytest.raises(ValueError):
        build_metrics(reg)
