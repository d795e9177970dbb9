"""Issue 15, finding 1 (and 2, 3, 4, 7 as a user meets them): the README's evaluation and dead-letter blocks,
run as pasted, in bash, against a stack.

A live pipeline (three worker processes on topics of the test's own prefix) answers the 20 public questions
and dead-letters one message that is not JSON; then every ```bash block of README.md that uses ``ragstream
replay|shadow|evaluate|runs|dlq`` runs as it is written (``bash -e -x``; ``ragstream`` and ``python`` are
this checkout's, from ``scripts/bootstrap.sh``; ``python -m devstack status --env`` is pointed at the test
stack with ``RAG_DEVSTACK_*``). The shadow changes only the prompt template, so the latency gate of the README
(``latency.p50:+50%``) holds. The output is printed (pytest -s) for the record.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devstack.pipeline import Pipeline
from tests.e2e.conftest import wait_trace_rows
from tests.readme_blocks import readme_blocks
from workers.client import RagClient
from workers.contracts.messages import Request
from workers.kafka.producer import KafkaProducer
from workers.kafka.reader import read_topic
from workers.settings import KafkaSettings, Settings

ROOT = Path(__file__).resolve().parents[2]
RUN = "concise"  # the README's run name


def _layer() -> Path:
    """This checkout's venv (scripts/bootstrap.sh; seconds when the shared venv is at the pins)."""
    out = subprocess.run(["bash", "scripts/bootstrap.sh"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return Path(out.stdout.strip().splitlines()[-1])


def _shell(script: str, env: dict[str, str], cwd: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    path = cwd / "block.sh"
    path.write_text(script)
    return subprocess.run(
        ["bash", "-e", "-x", str(path)],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout_s,
    )


def _drop_run(env: dict[str, str], cwd: Path) -> None:
    _shell(f"ragstream runs delete {RUN} --yes || true\n", env, cwd, 120)


def _wait_dead_letters(kafka: KafkaSettings, topic: str, n: int, timeout_s: float = 60.0) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while len(records := read_topic(kafka, topic, timeout_s=30)) < n and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(records) == n, records
    return records


@pytest.mark.slow
def test_readme_evaluation_commands_run_as_pasted(
    stack: Any,
    pipeline_env: dict[str, str],
    pipeline_settings: Settings,
    questions: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    if not hasattr(stack, "cfg"):
        pytest.skip("needs the tests' own stack: `python -m devstack status --env` must describe it")
    blocks = readme_blocks()
    assert len(blocks) == 2, "the evaluation section and the dead-letter commands"
    layer = _layer()
    kafka = KafkaSettings(bootstrap_servers=stack.bootstrap_servers)
    prefix = pipeline_env["RAG_TOPICS__PREFIX"]
    # the README runs from the repository root and names ../shared/data/...; run it from a folder of its own
    # with the same neighbour, so that its eval-report/ and .ragstream/ stay out of the checkout
    work = tmp_path / "repo"
    work.mkdir()
    (tmp_path / "shared").symlink_to(ROOT.parent / "shared")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env.pop("HF_HUB_OFFLINE", None)  # the shadow generator calls the LLM server through huggingface_hub
    env.update(
        {k: v for k, v in pipeline_env.items() if k not in stack.env()},  # the live prefix, table, monitor
        PATH=f"{layer / 'bin'}:{env.get('PATH', '')}",
        RAG_DEVSTACK_HOME=str(stack.cfg.home),
        RAG_DEVSTACK_KAFKA_PORT=str(stack.cfg.kafka_port),
        RAG_DEVSTACK_PG_PORT=str(stack.cfg.pg_port),
        RAG_DEVSTACK_LLM_PORT=str(stack.cfg.llm_port),
        COLUMNS="160",
    )
    helper = {**env, **stack.env()}  # the test's own commands; the README's blocks export these themselves
    _drop_run(helper, work)
    try:
        # live traffic: 20 answered questions and one message the retriever cannot read
        live = Pipeline(env=pipeline_env, log_dir=tmp_path / "live-logs")
        live.start()
        try:
            live.wait_ready(timeout_s=240)
            with RagClient(pipeline_settings) as client:
                reqs = [Request(query=q["q"], generation={"max_new_tokens": 24}) for q in questions]  # type: ignore[arg-type]
                answers = client.ask_many(reqs, timeout_s=600)
            assert [a.status for a in answers.values()].count("ok") == 20
            with KafkaProducer(kafka) as producer:
                producer.produce(prefix + "rag.requests", b"not json {", b"bad-1")
                assert producer.flush(10) == 0
            _wait_dead_letters(kafka, prefix + "rag.dead-letter", 1)
            # sent back while the retriever runs, it fails again: its new dead letter counts the attempts on
            back = _shell("ragstream dlq replay --error-class bad_message\n", helper, work, 120)
            assert back.returncode == 0 and "delivered=1" in back.stdout, back.stdout
            letters = _wait_dead_letters(kafka, prefix + "rag.dead-letter", 2)
            assert sorted(json.loads(r.value or b"")["attempts"] for r in letters) == [1, 2]
            assert wait_trace_rows(stack.database_url, pipeline_env["RAG_MONITOR__TABLE"], 20) == 20
        finally:
            codes = live.stop(timeout_s=40)
        assert all(c == 0 for c in codes.values()), codes

        # one shell session, the blocks pasted one after the other (the first one's `eval` points it at the stack)
        marks = [f": ===== README block {i + 1} =====" for i in range(len(blocks))]
        script = "".join(f"{mark}\n{block}" for mark, block in zip(marks, blocks, strict=True))
        out = _shell(script, env, work, 1800)
        print(f"\n===== README blocks as pasted, exit {out.returncode} =====\n{script}----- output -----\n{out.stdout}")
        assert out.returncode == 0, out.stdout[-6000:]
        evaluation, dlq = out.stdout.split(f"+ {marks[1]}")

        # `eval "$(python -m devstack status --env)"` pointed the shell at the test stack
        assert f"export RAG_KAFKA__BOOTSTRAP_SERVERS={stack.bootstrap_servers}" in evaluation
        # the shell took every line as written: no stray files from redirections
        assert sorted(p.name for p in work.iterdir()) == [".ragstream", "block.sh", "eval-report"]
        assert "dry run: 22 records in range" in evaluation  # 20 questions and the bad message, sent twice
        # shadow: ready first, then the replay, and it stopped by itself when all were answered
        ready, replaying = evaluation.index("shadow run ready:"), evaluation.index("replaying into")
        assert ready < replaying
        assert "stopped=all_answered answered=20 of 20" in evaluation
        report = json.loads((work / "eval-report" / "report.json").read_text())
        c = report["candidate"]
        assert report["passed"] is True and c["source"] == f"run:{RUN}" and report["baseline"]["source"] == "live"
        assert (
            c["counts"]["ok"] == 20
            and c["replayed"] == 20
            and c["provenance"][0]["provenance"]["template_id"] == "concise"
        )
        assert report["latency_not_comparable"][-1] == "end_to_end_ms"
        assert "pass latency.p50:+50%" in evaluation and "pass error_rate:max=0.01" in evaluation
        assert f"deleted run {RUN}:" in evaluation and f"│ {RUN} " in evaluation
        # dead letters: listed, shown with the raw payload, a dry run of sending it back
        assert "bad_message" in dlq and "not json {" in dlq and "would send 2 to" in dlq
        assert "attempts     2" in dlq  # dlq show: the newest dead letter, sent back once
    finally:
        _drop_run(helper, work)
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            conn.execute(
                f"DROP TABLE IF EXISTS rag_traces_eval_{RUN}, rag_traces_eval_{RUN}_errors, rag_answers_eval_{RUN}"
            )
