"""The run catalog's naming: which topics and tables belong to which run."""

from __future__ import annotations

from workers.evaluation.catalog import run_of_topic, run_tables

BASES = ("rag.requests", "rag.prompts", "rag.responses", "rag.dead-letter", "rag.run-log")


def test_run_names_come_from_the_run_topics() -> None:
    assert run_of_topic("rag.eval.k3-concise.rag.requests", BASES) == "k3-concise"
    assert run_of_topic("rag.eval.v1.2.rag.run-log", BASES) == "v1.2"  # dots in a run name
    assert run_of_topic("rag.requests", BASES) is None  # live
    assert run_of_topic("t1.rag.requests", BASES) is None
    assert run_of_topic("rag.eval..rag.requests", BASES) is None
    assert run_of_topic("rag.eval.x.other", BASES) is None


def test_run_tables_are_the_trace_errors_and_answer_tables() -> None:
    assert run_tables("k3-concise") == [
        "rag_traces_eval_k3_concise",
        "rag_traces_eval_k3_concise_errors",
        "rag_answers_eval_k3_concise",
    ]
