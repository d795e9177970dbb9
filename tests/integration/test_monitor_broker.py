"""The monitor rides through a broker restart (issue 14 #11): it waits for the broker at start and while
running, and exits (status 2, one line) only after ``RAG_MONITOR__BROKER_WAIT_S`` seconds without it.

The broker is a private one (its own home and port) that the tests stop and start; PostgreSQL is the session's.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg_pool import ConnectionPool

from devstack.stack import Stack, StackConfig
from tests.integration.test_worker_ports import MonitorProc, _env, _wait
from tests.kafka_helpers import produce
from workers.adapters.traces import TraceRecorder
from workers.contracts.messages import Request, Response
from workers.contracts.serde import encode
from workers.settings import TopicSettings


def _free_pair() -> int:
    """A port whose next port is free too (the broker's controller listens on port + 1)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            try:
                with socket.socket() as b:
                    b.bind(("127.0.0.1", port + 1))
                    return port
            except OSError:
                continue
    raise RuntimeError("no free port pair")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Stack]:
    private = Stack(StackConfig(home=tmp_path / "kafka", kafka_port=_free_pair(), services=("kafka",)))
    private.up()
    try:
        yield private
    finally:
        private.down()


def _create_topics(bootstrap: str, topics: TopicSettings) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [topics.name(k) for k in ("requests", "prompts", "responses", "dead_letter")]  # type: ignore[arg-type]
    for fut in admin.create_topics([NewTopic(n, 3, 1) for n in names]).values():
        fut.result(30)


def _monitor_env(stack: Any, broker: Stack, unique: str, wait_s: float) -> dict[str, str]:
    return _env(
        stack,
        RAG_KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap_servers,
        RAG_TOPICS__PREFIX=f"mb{unique}.",
        RAG_MONITOR__APP_ID=f"monitor-{unique}",
        RAG_MONITOR__TABLE=f"traces_{unique}",
        RAG_MONITOR__METRICS_PORT="auto",
        RAG_MONITOR__BROKER_WAIT_S=str(wait_s),
        RAG_KAFKA__SESSION_TIMEOUT_MS="6000",
        RAG_LOG_LEVEL="INFO",
    )


def _answered(pool: ConnectionPool, table: str, rid: Any) -> bool:
    try:
        with pool.connection() as conn:
            row = conn.execute(f"SELECT response_status FROM {table} WHERE request_id = %s", (rid,)).fetchone()
    except Exception:  # noqa: BLE001 - the table appears with the monitor's first start
        return False
    return bool(row and row[0] == "ok")


def _request_and_answer(bootstrap: str, topics: TopicSettings, text: str) -> Any:
    req = Request(query=text)
    resp = Response(request_id=req.request_id, answer=f"answer to {text}")
    produce(bootstrap, topics.name("requests"), [(str(req.request_id), encode(req))])
    produce(bootstrap, topics.name("responses"), [(str(req.request_id), encode(resp))])
    return req.request_id


def test_a_monitor_started_while_the_broker_is_down_waits_and_rides_through_a_restart(
    stack: Any, broker: Stack, unique: str, tmp_path: Path
) -> None:
    topics = TopicSettings(prefix=f"mb{unique}.")
    _create_topics(broker.bootstrap_servers, topics)
    table = f"traces_{unique}"
    pool = ConnectionPool(stack.database_url, min_size=1, max_size=2, open=True)
    broker.down()
    mon = MonitorProc(_monitor_env(stack, broker, unique, wait_s=180), tmp_path / "monitor.log")
    try:
        waiting = "Kafka broker not reachable, trying again"
        _wait(lambda: waiting in mon.text() or mon.proc.poll() is not None, 30, "the monitor to wait for the broker")
        time.sleep(3)
        assert mon.proc.poll() is None, mon.text()[-3000:]  # waiting for the broker, not exited (was: status 2)
        broker.up()
        first = _request_and_answer(broker.bootstrap_servers, topics, "first")
        _wait(lambda: _answered(pool, table, first), 120, "the trace row written after the broker came")
        broker.down()  # a broker restart while the monitor runs
        time.sleep(5)
        broker.up()
        second = _request_and_answer(broker.bootstrap_servers, topics, "second")
        _wait(lambda: _answered(pool, table, second), 120, "the trace row written after the restart")
        assert mon.proc.poll() is None, mon.text()[-3000:]
    finally:
        code = mon.stop()
        TraceRecorder(pool, table=table).drop()
        pool.close()
    assert code == 0, mon.text()[-3000:]


def test_a_monitor_exits_only_after_the_broker_bound(stack: Any, broker: Stack, unique: str, tmp_path: Path) -> None:
    topics = TopicSettings(prefix=f"mb{unique}.")
    _create_topics(broker.bootstrap_servers, topics)
    mon = MonitorProc(_monitor_env(stack, broker, unique, wait_s=10), tmp_path / "monitor.log")
    try:
        _wait(lambda: "partitions assigned" in mon.text() or mon.proc.poll() is not None, 90, "the monitor to join")
        assert mon.proc.poll() is None, mon.text()[-3000:]
        broker.down()
        t0 = time.monotonic()
        time.sleep(6)
        assert mon.proc.poll() is None, "stopped before its bound"
        code = mon.proc.wait(60)  # bound 10 s + at most 15 s to stop + probe and start slack
        elapsed = time.monotonic() - t0
    finally:
        if mon.proc.poll() is None:
            mon.proc.send_signal(signal.SIGKILL)
        mon.stop()
        pool = ConnectionPool(stack.database_url, min_size=1, max_size=1, open=True)
        TraceRecorder(pool, table=f"traces_{unique}").drop()
        pool.close()
    assert code == 2 and elapsed >= 10, (code, elapsed)
    errors = [line for line in mon.text().splitlines() if line.startswith("error (")]
    assert len(errors) == 1 and "not reachable for 10 s (RAG_MONITOR__BROKER_WAIT_S)" in errors[0], errors
