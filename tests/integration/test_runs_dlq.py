"""``ragstream runs list|delete`` and ``ragstream dlq show|replay`` on the real broker and database.

A run is made the way a user makes one (``ragstream replay`` into ``rag.eval.<run>.``, a consumer group of the
run, its three tables); ``runs list`` shows it with its requests and tables, ``runs delete`` asks first and
then removes its topics, groups and tables and nothing else. Dead letters: ``dlq show`` prints the raw payload,
a position that holds nothing is an error, and a dead letter sent back carries its attempts so far, so the
next dead letter of the same message counts on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from workers.contracts.messages import Request
from workers.contracts.serde import decode, encode
from workers.kafka.admin import topic_partitions
from workers.kafka.producer import KafkaProducer
from workers.kafka.reader import read_topic
from workers.settings import KafkaSettings
from workers.stream.records import Incoming, dead_letter_of

CLI = [sys.executable, "-m", "workers.cli"]
ROOT = Path(__file__).resolve().parents[2]


def _cli(args: list[str], env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        env={**os.environ, **env, "COLUMNS": "200"},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )


@pytest.fixture
def live(stack: Any, unique: str) -> Iterator[dict[str, str]]:
    """A live topic set of its own (prefix ``t<unique>.``), deleted afterwards."""
    env = {**stack.env(), "RAG_TOPICS__PREFIX": f"t{unique}."}
    out = _cli(["topics", "apply", "--file", str(ROOT / "topics.yaml")], env)
    assert out.returncode == 0, out.stderr
    yield env
    from workers.kafka.admin import delete_topics

    kafka = KafkaSettings(bootstrap_servers=stack.bootstrap_servers)
    delete_topics(kafka, [t for t in topic_partitions(kafka) if t.startswith(f"t{unique}.")])


def test_runs_list_and_delete_remove_exactly_a_runs_topics_groups_and_tables(
    stack: Any, live: dict[str, str], unique: str
) -> None:
    kafka = KafkaSettings(bootstrap_servers=stack.bootstrap_servers)
    run = f"r{unique}"
    with KafkaProducer(kafka) as producer:
        for i in range(5):
            req = Request(query=f"question {i}")
            producer.produce(f"t{unique}.rag.requests", encode(req), str(req.request_id))
        assert producer.flush(10) == 0
    out = _cli(["replay", "--run", run, "--no-progress"], live)
    assert out.returncode == 0 and "produced=5 request_ids=5" in out.stdout, out.stdout + out.stderr
    # a consumer group of the run (as its shadow retriever would leave) and its three tables
    group = f"rag.eval.{run}.retriever"
    c = Consumer({"bootstrap.servers": stack.bootstrap_servers, "group.id": group, "enable.auto.commit": False})
    c.commit(offsets=[TopicPartition(f"rag.eval.{run}.rag.requests", 0, 1)], asynchronous=False)
    c.close()
    tables = [f"rag_traces_eval_{run}", f"rag_traces_eval_{run}_errors", f"rag_answers_eval_{run}"]
    other = f"rag_traces_eval_{run}_keep"  # not one of the run's tables: listed apart, never dropped
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        for t in [*tables, other]:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {t} (id int, pad text)")
        conn.execute(f"INSERT INTO {tables[0]} SELECT g, repeat('x', 500) FROM generate_series(1, 200) g")
    try:
        out = _cli(["runs", "list"], live)
        assert out.returncode == 0, out.stderr
        line = next(ln for ln in out.stdout.splitlines() if f" {run} " in ln)
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        print(out.stdout)
        assert cells[0] == run and cells[1] != "–" and cells[2] == "5" and cells[3] == "0"  # created, requests
        assert cells[6] == "3" and cells[7].endswith("kB")  # three tables and their size
        assert other in out.stdout  # evaluation tables of no run
        # asked first: answering no deletes nothing
        out = _cli(["runs", "delete", run], live, stdin="n\n")
        assert out.returncode == 1 and "nothing deleted" in out.stdout, out.stdout + out.stderr
        assert f"rag.eval.{run}.rag.requests" in topic_partitions(kafka)
        out = _cli(["runs", "delete", run, "--yes"], live)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "deleted run" in out.stdout and "1 consumer groups, 3 tables" in out.stdout, out.stdout
        assert not [t for t in topic_partitions(kafka) if t.startswith(f"rag.eval.{run}.")]
        assert f"t{unique}.rag.requests" in topic_partitions(kafka)  # the live topics stay
        with psycopg.connect(stack.database_url) as conn:
            left = {
                r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE %s", (f"%{run}%",))
            }
        assert left == {other}
        from workers.kafka.admin import consumer_groups

        assert consumer_groups(kafka, f"rag.eval.{run}.") == []
        out = _cli(["runs", "delete", run, "--yes"], live)
        assert out.returncode == 2 and f"no run named '{run}'" in out.stderr
    finally:
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {', '.join([*tables, other])}")


def test_dlq_show_positions_and_attempts_counting_on(stack: Any, live: dict[str, str], unique: str) -> None:
    kafka = KafkaSettings(bootstrap_servers=stack.bootstrap_servers)
    source, dlq_topic = f"t{unique}.rag.requests", f"t{unique}.rag.dead-letter"
    raw = json.dumps({"query": "half a request"}).encode()
    letter = dead_letter_of(
        Incoming(source, 0, 41, b"k1", raw, {"request_id": str(uuid.uuid4())}, 0),
        stage="retriever",
        error=ValueError("missing fields"),
    )
    with KafkaProducer(kafka) as producer:
        producer.produce(dlq_topic, encode(letter), b"k1")
        assert producer.flush(10) == 0
    (rec,) = read_topic(kafka, dlq_topic, timeout_s=30)
    pos = f"{rec.partition}:{rec.offset}"

    out = _cli(["dlq", "show"], live)  # the newest
    assert out.returncode == 0, out.stderr
    assert f"dead letter {pos}" in out.stdout and '"query": "half a request"' in out.stdout
    assert "attempts     1" in out.stdout and "missing fields" in out.stdout
    typo = f"{rec.partition}:{rec.offset + 100}"
    for args in (["dlq", "show", typo], ["dlq", "replay", "--positions", typo]):
        out = _cli(args, live)
        assert out.returncode == 2 and f"no dead letter at {typo}" in out.stderr, out.stdout + out.stderr
    out = _cli(["dlq", "replay", "--positions", pos], live)
    assert out.returncode == 0 and "delivered=1" in out.stdout, out.stdout + out.stderr
    # the message is back in its source topic with its attempts so far; failing again, it counts on
    (back,) = [r for r in read_topic(kafka, source, timeout_s=30) if r.value == raw]
    assert (
        back.headers["dlq_attempts"] == "1"
        and back.headers["dlq_replayed_from"] == f"{dlq_topic}/{rec.partition}/{rec.offset}"
    )
    again = dead_letter_of(
        Incoming(source, back.partition, back.offset, b"k1", back.value, dict(back.headers), 0),
        stage="retriever",
        error=ValueError("missing fields"),
    )
    assert again.attempts == 2 and again.first_failure_at == decode(rec.value, type(letter)).first_failure_at
