"""devstack's Stack: idempotent up, status, down, and the shared fixtures."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from devstack._proc import free_port
from devstack.stack import REPO_ROOT, Stack, StackConfig


@pytest.fixture(scope="module")
def own_stack() -> Iterator[Stack]:
    """A second, private stack (Kafka + PostgreSQL) on free ports, so down() cannot disturb other tests."""
    home = REPO_ROOT / ".devstack" / f"test-own-{free_port()}"
    stack = Stack(
        StackConfig(home=home, kafka_port=free_port(pair=True), pg_port=free_port(), services=("kafka", "postgres"))
    )
    try:
        yield stack
    finally:
        stack.down()
        import shutil

        shutil.rmtree(home, ignore_errors=True)


def test_up_is_idempotent_then_down_stops(own_stack: Stack) -> None:
    own_stack.up()
    first = own_stack.status()
    assert all(s["running"] for s in first.values())
    assert all(s["pid"] for s in first.values())
    t0 = time.monotonic()
    own_stack.up()
    assert time.monotonic() - t0 < 10
    assert {k: v["pid"] for k, v in own_stack.status().items()} == {k: v["pid"] for k, v in first.items()}
    assert Path(first["kafka"]["log"]).exists()

    with psycopg.connect(own_stack.database_url) as conn:
        row = conn.execute("SELECT '[1,2,3]'::vector <-> '[1,2,4]'::vector").fetchone()
        assert row is not None and row[0] == pytest.approx(1.0)

    own_stack.down()
    assert not any(s["running"] for s in own_stack.status().values())
    assert all(s["pid"] is None for s in own_stack.status().values())
    own_stack.down()  # idempotent


def test_cli_status_exit_code(own_stack: Stack) -> None:
    cfg = own_stack.cfg
    args = [sys.executable, "-m", "devstack", "status", "--home", str(cfg.home), "--kafka-port", str(cfg.kafka_port),
            "--pg-port", str(cfg.pg_port), "--only", "kafka,postgres"]  # fmt: skip
    out = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 1, out.stderr
    assert f"RAG_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:{cfg.kafka_port}" in out.stdout
    # --env: only the exports, for eval "$(python -m devstack status --env)"; what is down is said on stderr
    out = subprocess.run([*args, "--env"], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 1 and "not running: kafka, postgres" in out.stderr, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines and all(line.startswith("export RAG_") for line in lines), out.stdout
    assert f"export RAG_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:{cfg.kafka_port}" in lines
    shell = subprocess.run(["bash", "-c", f'eval "$({" ".join(args)} --env)"; echo "$RAG_DATABASE_URL"'], cwd=REPO_ROOT,
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert shell.stdout.strip() == f"postgresql://postgres@127.0.0.1:{cfg.pg_port}/ragstream", shell.stderr


def test_shared_stack_kafka_roundtrip(stack: Stack, make_topics: Callable[..., list[str]], unique: str) -> None:
    (topic,) = make_topics([f"test.devstack.{unique}"], partitions=2)
    md = AdminClient({"bootstrap.servers": stack.bootstrap_servers}).list_topics(topic, timeout=10)
    assert len(md.topics[topic].partitions) == 2
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers, "message.max.bytes": 8 * 1024 * 1024})
    producer.produce(topic, key=b"k", value=b"x" * (4 * 1024 * 1024))  # 4 MiB prompt-sized message
    assert producer.flush(30) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": stack.bootstrap_servers,
            "group.id": f"g-{unique}",
            "auto.offset.reset": "earliest",
            "fetch.message.max.bytes": 8 * 1024 * 1024,
        }
    )
    try:
        consumer.subscribe([topic])
        msg = None
        deadline = time.monotonic() + 30
        while msg is None and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
        assert msg is not None and msg.error() is None
        assert len(msg.value() or b"") == 4 * 1024 * 1024
    finally:
        consumer.close()


def test_shared_stack_postgres_has_vector(stack: Stack) -> None:
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    assert row is not None
