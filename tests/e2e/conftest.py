"""Shared fixtures and helpers of the end-to-end tests: the ingested Python docs, a pipeline environment on
topics of its own, the public questions, reading a topic without a consumer group.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devstack._proc import free_port
from workers.contracts.messages import Response
from workers.contracts.serde import decode
from workers.kafka.reader import read_topic
from workers.settings import KafkaSettings, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = ROOT.parent / "shared" / "data" / "questions_public.jsonl"
DOCS_TABLE = "e2e_pydocs_chunks"


def wait_trace_rows(database_url: str, table: str, n: int, timeout_s: float = 90.0) -> int:
    """Poll the monitor's trace ``table`` until ``n`` rows have a response (or ``timeout_s`` passes); the count seen
    last (0 while the table does not exist yet)."""
    rows, deadline = 0, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(database_url) as conn:
                row = conn.execute(f"SELECT count(*) FROM {table} WHERE response_status IS NOT NULL").fetchone()
                rows = int(row[0]) if row else 0
        except psycopg.errors.UndefinedTable:
            rows = 0
        if rows >= n:
            break
        time.sleep(0.5)
    return rows


def public_questions() -> list[dict[str, Any]]:
    """The labelled public questions: ``{"q": ..., "topics": [...]}`` per line."""
    return [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]


def settings_for(env: Mapping[str, str]) -> Settings:
    """Settings built from ``env``'s ``RAG_*`` variables (the process environment is restored afterwards)."""
    keys = [k for k in env if k.startswith("RAG_")]
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: env[k] for k in keys})
    try:
        return load_settings()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def responses_in_topic(bootstrap: str, topic: str) -> list[Response]:
    """Every Response in a topic, read with ``assign`` (no consumer group; :func:`workers.kafka.read_topic`)."""
    records = read_topic(KafkaSettings(bootstrap_servers=bootstrap), topic, timeout_s=30)
    return [decode(r.value, Response) for r in records]


def delete_topics_with_prefix(bootstrap: str, prefix: str) -> None:
    """Delete every topic whose name starts with ``prefix`` (test clean-up)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    if names:
        for fut in admin.delete_topics(names, operation_timeout=30).values():
            fut.result()


@pytest.fixture
def questions_path() -> Path:
    """The labelled public questions file (``{"q": ..., "topics": [...]}`` per line)."""
    return QUESTIONS


@pytest.fixture
def questions() -> list[dict[str, Any]]:
    """The 20 labelled public questions."""
    return public_questions()


@pytest.fixture
def pipeline_settings(pipeline_env: dict[str, str]) -> Settings:
    """Settings of the test's pipeline (its topic prefix, stack addresses), as the client would build them."""
    return settings_for(pipeline_env)


@pytest.fixture
def drop_prefix(stack: Any) -> Iterator[Callable[[str], None]]:
    """``drop_prefix(prefix)``: topics whose names start with ``prefix`` are deleted when the test ends."""
    prefixes: list[str] = []
    yield prefixes.append
    for prefix in prefixes:
        delete_topics_with_prefix(stack.bootstrap_servers, prefix)


@pytest.fixture(scope="session")
def pydocs_table(stack: Any) -> str:
    """Python's reference docs ingested once per session into a table of their own (via the CLI)."""
    env = {**os.environ, **stack.env(), "RAG_RETRIEVER__TABLE": DOCS_TABLE}
    out = subprocess.run(
        [sys.executable, "-m", "workers.cli", "ingest", "--python-docs"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    print(out.stdout.strip().splitlines()[-1])
    return DOCS_TABLE


@pytest.fixture
def pipeline_env(stack: Any, unique: str, pydocs_table: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment of a pipeline on topics of its own (prefix), with its own groups and trace table."""
    prefix = f"t{unique}."
    env = {
        **stack.env(),
        "RAG_TOPICS__PREFIX": prefix,
        "RAG_RETRIEVER__TABLE": pydocs_table,
        "RAG_MONITOR__TABLE": f"traces_{unique}",
        "RAG_MONITOR__APP_ID": f"monitor-{unique}",
        "RAG_MONITOR__METRICS_PORT": str(free_port()),
        "RAG_MONITOR__WEB_PORT": str(free_port()),
        "RAG_WORKER__SHUTDOWN_TIMEOUT_S": "10",
    }
    out = subprocess.run(
        [sys.executable, "-m", "workers.cli", "topics", "apply", "--file", str(ROOT / "topics.yaml")],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    yield env
    delete_topics_with_prefix(stack.bootstrap_servers, prefix)
