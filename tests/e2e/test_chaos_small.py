"""A short chaos run (``bench/chaos.py``): the same faults and checks as ``python -m bench.chaos``, smaller.

It runs on a stack of its own (``.devstack/chaos-test``, ports 39192/35532/38180, simulated LLM engine): the
broker and PostgreSQL restarts would disturb the other tests' shared stack. 60 requests at 3/s; one SIGKILL
per worker type; broker and PostgreSQL restarted once; the LLM server answering 503 for 8 s; 60 malformed
messages of six kinds; 12 chat completions streamed through two gateway replicas (each complete or ended with an
error chunk, none mixed). About 2–3 minutes. ``RAG_TEST_KEEP_STACK=1`` leaves its stack running for the next
session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.chaos import quick_options, run_chaos
from devstack.stack import REPO_ROOT


@pytest.mark.slow
def test_small_chaos_run(tmp_path: Path) -> None:
    opts = quick_options(
        requests=60,
        rate=3.0,
        kills=1,
        replicas={"retriever": 1, "generator": 2, "monitor": 1},
        gateways=2,
        streams=12,
        llm_outage_s=8.0,
        answer_timeout_s=120.0,
        seed=3,
        home=REPO_ROOT / ".devstack" / "chaos-test",
        kafka_port=39192,
        pg_port=35532,
        llm_port=38180,
        keep_stack=os.environ.get("RAG_TEST_KEEP_STACK", "") not in ("", "0", "false"),
    )
    report = run_chaos(opts, log_dir=tmp_path / "logs")
    print("\n" + "\n".join(report.events))
    print(report.table())
    failed = [c for c in report.checks if c.ok is False]
    assert report.ok, "chaos checks failed:\n" + "\n".join(
        f"{c.name}: {c.value} (expected {c.expected})" for c in failed
    )
