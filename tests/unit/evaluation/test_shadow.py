"""Shadow run planning: overrides validated against the settings, and never the live topics or groups."""

from __future__ import annotations

import pytest

from workers.contracts.errors import ConfigError
from workers.evaluation.runlog import RunLogEntry
from workers.evaluation.shadow import attempt, parse_overrides, plan_shadow, trace_table_name, worker_env
from workers.settings import Settings
from workers.supervisor import process_env


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
        "retriever.template=nosuch",
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


def test_a_bad_template_fails_when_the_shadow_is_planned_naming_the_templates() -> None:
    with pytest.raises(ConfigError, match=r"unknown prompt template 'consise'; known: \['concise', 'default'\]"):
        plan_shadow(Settings(), "r1", ["retriever.template=consise"])
    assert plan_shadow(Settings(), "r1", ["retriever.template=concise"]).overrides == {
        "RAG_RETRIEVER__TEMPLATE": "concise"
    }


def _entry(**overrides: str) -> RunLogEntry:
    return RunLogEntry(kind="shadow_start", run="r1", overrides=overrides)


def test_a_used_run_is_refused_with_other_settings_and_continued_with_the_same() -> None:
    plan = plan_shadow(Settings(), "r1", ["retriever.template=concise"])
    assert attempt(plan, None, 0) == "fresh"
    assert attempt(plan, _entry(RAG_RETRIEVER__TEMPLATE="concise"), 22) == "resume"
    with pytest.raises(ConfigError, match="RAG_RETRIEVER__TEMPLATE=default") as info:
        attempt(plan, _entry(RAG_RETRIEVER__TEMPLATE="default"), 22)
    assert "22 prompts and answers would be counted" in str(info.value) and "runs delete r1" in str(info.value)
    # an earlier attempt that produced nothing (a worker that never started) mixes nothing up
    assert attempt(plan, _entry(RAG_RETRIEVER__TEMPLATE="default"), 0) == "fresh"
    assert attempt(plan, _entry(RAG_RETRIEVER__TEMPLATE="concise"), 0) == "resume"
    with pytest.raises(ConfigError, match="not recorded"):
        attempt(plan, None, 5)  # answers from a shadow that left no log entry
    other = plan_shadow(Settings(), "r1")
    with pytest.raises(ConfigError, match="no overrides"):
        attempt(other, _entry(RAG_RETRIEVER__TEMPLATE="concise"), 1)
