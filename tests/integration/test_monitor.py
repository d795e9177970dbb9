"""The monitor as a process (``python -m workers.monitor.app``) against the real broker and PostgreSQL.

Every test has its own topic prefix, app id (= consumer group) and trace table, so tests do not see each
other's events. The monitor runs as a subprocess, as in production, and is stopped with SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from psycopg_pool import ConnectionPool

from devstack._proc import free_port
from workers.adapters.traces import TraceRecorder
from workers.contracts.messages import ChatMessage, DeadLetter, Passage, Prompt, Request, Response, Usage
from workers.contracts.serde import encode
from workers.settings import Settings, TopicSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0
WAIT_TIMEOUT_S = 60.0


def _wait(cond: Callable[[], Any], timeout_s: float = WAIT_TIMEOUT_S, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)


class Mon:
    """One test's monitor configuration: topics, app id, table, ports, and helpers to drive it."""

    def __init__(self, stack: Any, unique: str, make_topics: Callable[..., list[str]], tmp: Path) -> None:
        self.stack = stack
        self.settings = Settings(topics=TopicSettings(prefix=f"t{unique}."))
        self.topics = {k: self.settings.topics.name(k) for k in ("requests", "prompts", "responses", "dead_letter")}
        make_topics(list(self.topics.values()), partitions=3)
        self.app_id = f"monitor-{unique}"
        self.table = f"traces_{unique}"
        self.metrics_port = free_port()
        self.pool = ConnectionPool(stack.database_url, min_size=1, max_size=2, open=True)
        self.recorder = TraceRecorder(self.pool, table=self.table)
        self.producer = Producer({"bootstrap.servers": stack.bootstrap_servers, "linger.ms": 1})
        self.log_dir = tmp  # monitor logs (run1.log, ...) and faust's data folder (TMPDIR)
        self.runs = 0

    def close(self) -> None:
        self.producer.flush(10)
        try:
            self.recorder.drop()
        finally:
            self.pool.close()

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_") and k != "DATABASE_URL"}
        env.update(
            {
                "PYTHONPATH": str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
                "RAG_KAFKA__BOOTSTRAP_SERVERS": self.stack.bootstrap_servers,
                "RAG_DATABASE_URL": self.stack.database_url,
                "RAG_TOPICS__PREFIX": self.settings.topics.prefix,
                "RAG_MONITOR__APP_ID": self.app_id,
                "RAG_MONITOR__TABLE": self.table,
                "RAG_MONITOR__WEB_PORT": "0",
                "RAG_MONITOR__METRICS_PORT": str(self.metrics_port),
                "RAG_LOG_LEVEL": "INFO",
                "TMPDIR": str(self.log_dir),
                # A killed monitor's partitions are reassigned after this (broker minimum 6 s).
                "RAG_KAFKA__SESSION_TIMEOUT_MS": "6000",
            }
        )
        return env

    @contextmanager
    def running(self, killed: bool = False) -> Iterator[subprocess.Popen[bytes]]:
        """Run the monitor process; on exit stop it with SIGTERM and check it stopped cleanly.

        Args:
            killed: the body kills the process itself (SIGKILL); its exit code is not checked.
        """
        self.runs += 1
        log_path = self.log_dir / f"run{self.runs}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "workers.monitor.app"],
                env=self.env(),
                cwd=str(REPO_ROOT),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                _wait(lambda: proc.poll() is not None or self.metrics_text() is not None, START_TIMEOUT_S, "/metrics")
                assert proc.poll() is None, f"monitor exited early, see {log_path}:\n{log_path.read_text()[-3000:]}"
                _wait(self.tables_exist, START_TIMEOUT_S, "the monitor to create its tables")
                yield proc
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
                        raise AssertionError(f"monitor did not stop on SIGTERM, see {log_path}") from None
        if killed:
            assert proc.returncode == -signal.SIGKILL
            return
        assert proc.returncode == 0, (
            f"monitor exit code {proc.returncode}, see {log_path}:\n{log_path.read_text()[-3000:]}"
        )

    def tables_exist(self) -> bool:
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL",
                (self.table, self.recorder.errors_table),
            ).fetchone()
        return bool(row and row[0])

    def metrics_text(self) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as resp:
                return str(resp.read().decode())
        except OSError:
            return None

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the monitor's /metrics (0 when absent)."""
        text = self.metrics_text() or ""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", line)
            if not m or m.group(1) != name:
                continue
            got = ",".join(sorted((m.group(2) or "{}")[1:-1].split(","))) if m.group(2) else ""
            if got == want:
                return float(m.group(3))
        return 0.0

    def produce(self, kind: str, value: bytes, key: str | None = None) -> tuple[int, int]:
        """Produce one value and return its (partition, offset)."""
        out: dict[str, Any] = {}

        def _dr(err: Any, msg: Any) -> None:
            out["err"], out["pos"] = err, (msg.partition(), msg.offset())

        self.producer.produce(self.topics[kind], value=value, key=key, on_delivery=_dr)
        self.producer.flush(30)
        assert out.get("err") is None, out.get("err")
        return out["pos"]

    def committed_equals_end(self) -> bool:
        """True when the monitor's group has committed every partition up to its end offset."""
        c = Consumer({"bootstrap.servers": self.stack.bootstrap_servers, "group.id": self.app_id})
        try:
            tps = [TopicPartition(t, p) for t in self.topics.values() for p in range(3)]
            committed = c.committed(tps, timeout=10)
            for tp in committed:
                _low, high = c.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
                if high > 0 and tp.offset != high:
                    return False
            return True
        finally:
            c.close()


@pytest.fixture
def mon(stack: Any, unique: str, make_topics: Callable[..., list[str]], tmp_path: Path) -> Iterator[Mon]:
    m = Mon(stack, unique, make_topics, tmp_path)
    try:
        yield m
    finally:
        m.close()


def _events(i: int) -> tuple[Request, Prompt, Response]:
    t0 = datetime.now(UTC)
    req = Request(query=f"question {i}?", created_at=t0)
    prompt = Prompt(
        request_id=req.request_id,
        created_at=t0 + timedelta(milliseconds=20),
        request=req,
        passages=[
            Passage(chunk_id=f"c{i}-0", document_id="lists", score=0.91, text="t", rank=0, tokens=5),
            Passage(chunk_id=f"c{i}-1", document_id="dicts", score=0.52, text="t", rank=1, tokens=5),
        ],
        messages=[ChatMessage(role="system", content="Answer."), ChatMessage(role="user", content=req.query)],
        template_id="default",
        template_hash="h1",
        prompt_tokens=40 + i,
        max_new_tokens=64,
        passages_dropped=1,
        query_truncated=False,
        timings_ms={"embed_ms": 4.0, "search_ms": 2.0, "prompt_ms": 1.0},
    )
    resp = Response(
        request_id=req.request_id,
        created_at=t0 + timedelta(milliseconds=500),
        answer=f"answer {i}",
        finish_reason="stop",
        usage=Usage(prompt_tokens=40 + i, completion_tokens=7, total_tokens=47 + i),
        model_id="tiny-llm",
        timings_ms={"generator_queue_ms": 3.0, "llm_ttft_ms": 50.0, "llm_total_ms": 400.0, "end_to_end_ms": 500.0},
    )
    return req, prompt, resp


def test_joins_three_requests_with_duplicates_and_serves_metrics(mon: Mon) -> None:
    """(a) request, prompt and response of 3 ids, each event twice → 3 joined rows, counters not doubled; (d)."""
    triples = [_events(i) for i in range(3)]
    # Response first for one id: order of arrival must not matter.
    mon.produce("responses", encode(triples[0][2]), str(triples[0][0].request_id))
    with mon.running():
        for req, prompt, resp in triples:
            key = str(req.request_id)
            for kind, ev in (("requests", req), ("prompts", prompt), ("responses", resp)):
                mon.produce(kind, encode(ev), key)
                mon.produce(kind, encode(ev), key)  # duplicate of every event
        # A dead letter with a request id (for a 4th id) and one without.
        rid4 = uuid.uuid4()
        mon.produce("requests", encode(Request(request_id=rid4, query="will fail")), str(rid4))
        dl = DeadLetter(
            request_id=rid4,
            source_topic=mon.topics["requests"],
            partition=0,
            offset=99,
            value_b64="",
            error_class="embedding_failed",
            error_message="boom",
            stage="retriever",
        )
        mon.produce("dead_letter", encode(dl))
        mon.produce("dead_letter", encode(dl.model_copy(update={"request_id": None, "offset": 100})))

        def all_done() -> bool:
            rows = [mon.recorder.get(r.request_id) for r, _, _ in triples]
            dl_row = mon.recorder.get(rid4)
            return (
                all(r is not None and r["status"] == "ok" and r["query"] is not None for r in rows)
                and dl_row is not None
                and dl_row["status"] == "dead_letter"
                and mon.recorder.count_errors() == 2
            )

        _wait(all_done, what="3 joined rows, a dead-lettered row and 2 error records")
        _wait(
            lambda: (
                mon.metric("ragstream_monitor_dead_letters_total", stage="retriever", error_class="embedding_failed")
                == 2
            )
        )
        time.sleep(1.5)  # let any duplicate still in flight be processed

        assert mon.recorder.count() == 4
        for i, (req, _prompt, _resp) in enumerate(triples):
            row = mon.recorder.get(req.request_id)
            assert row is not None
            assert row["query"] == f"question {i}?"
            assert row["answer"] == f"answer {i}" and row["finish_reason"] == "stop" and row["model_id"] == "tiny-llm"
            assert [p["chunk_id"] for p in row["passages"]] == [f"c{i}-0", f"c{i}-1"]
            assert [p["score"] for p in row["passages"]] == [0.91, 0.52]
            assert row["messages"][1] == {"role": "user", "content": f"question {i}?"}
            assert (row["template_id"], row["template_hash"], row["prompt_tokens"]) == ("default", "h1", 40 + i)
            assert row["passages_dropped"] == 1 and row["query_truncated"] is False
            assert (row["usage_prompt_tokens"], row["usage_completion_tokens"], row["usage_total_tokens"]) == (
                40 + i,
                7,
                47 + i,
            )
            assert row["timings_ms"] == {
                "embed_ms": 4.0,
                "search_ms": 2.0,
                "prompt_ms": 1.0,
                "generator_queue_ms": 3.0,
                "llm_ttft_ms": 50.0,
                "llm_total_ms": 400.0,
                "end_to_end_ms": 500.0,
            }
            assert row["error_class"] is None and row["created_at"] == req.created_at
            assert row["kafka_topic"] in mon.topics.values() and row["kafka_offset"] >= 0
        dl_row = mon.recorder.get(rid4)
        assert dl_row is not None
        assert (dl_row["error_class"], dl_row["error_message"], dl_row["error_stage"]) == (
            "embedding_failed",
            "boom",
            "retriever",
        )

        # Counters: 4 requests (3 + the dead-lettered one), 3 prompts, 3 ok answers: duplicates not counted.
        assert mon.metric("ragstream_monitor_requests_total") == 4
        assert mon.metric("ragstream_monitor_prompts_total") == 3
        assert mon.metric("ragstream_monitor_answers_total", status="ok") == 3
        assert mon.metric("ragstream_monitor_errors_total", error_class="embedding_failed", stage="retriever") == 1
        assert mon.metric("ragstream_monitor_stage_latency_seconds_count", stage="end_to_end") == 3
        assert mon.metric("ragstream_monitor_stage_latency_seconds_count", stage="llm_ttft") == 3
        assert mon.metric("ragstream_monitor_stage_latency_seconds_count", stage="embed") == 3

        # (d) /metrics serves the named metrics.
        text = mon.metrics_text() or ""
        for name in (
            "ragstream_monitor_requests_total",
            "ragstream_monitor_prompts_total",
            "ragstream_monitor_answers_total",
            "# TYPE ragstream_monitor_errors_total counter",
            "ragstream_monitor_dead_letters_total",
            "# TYPE ragstream_monitor_bad_messages_total counter",
            'ragstream_monitor_stage_latency_seconds_bucket{le="0.001",stage="embed"}',
            'ragstream_monitor_stage_latency_seconds_bucket{le="60.0",stage="end_to_end"}',
            "ragstream_monitor_requests_in_flight",
            "ragstream_monitor_requests_past_deadline",
        ):
            assert name in text, name


def test_bad_message_is_recorded_and_the_monitor_goes_on(mon: Mon) -> None:
    """(b) nine responses, the fifth ok with a null answer → 8 rows + 1 error record; a tenth is still recorded."""
    ids = [uuid.uuid4() for _ in range(10)]
    positions: list[tuple[int, int]] = []
    for i, rid in enumerate(ids[:9]):
        if i == 4:
            raw = json.dumps({"schema_version": 1, "request_id": str(rid), "status": "ok", "answer": None}).encode()
        else:
            raw = encode(Response(request_id=rid, answer=f"a{i}"))
        positions.append(mon.produce("responses", raw, str(rid)))
    with mon.running():
        _wait(lambda: mon.recorder.count() == 8 and mon.recorder.count_errors() == 1, what="8 rows and 1 error")
        (err,) = mon.recorder.errors()
        assert (err["source_topic"], err["source_partition"], err["source_offset"]) == (
            mon.topics["responses"],
            *positions[4],
        )
        assert (err["seen_topic"], err["seen_partition"], err["seen_offset"]) == (
            mon.topics["responses"],
            *positions[4],
        )
        assert err["kind"] == "bad_message" and err["stage"] == "monitor" and err["error_class"] == "bad_message"
        assert "answer" in err["error_message"] and err["request_id"] == ids[4]
        assert mon.recorder.get(ids[4]) is None
        _wait(
            lambda: (
                mon.metric("ragstream_monitor_bad_messages_total", topic_kind="responses", error_class="bad_message")
                == 1
            )
        )

        mon.produce("responses", encode(Response(request_id=ids[9], answer="tenth")), str(ids[9]))
        row = _wait(lambda: mon.recorder.get(ids[9]), what="the tenth response")
        assert row["answer"] == "tenth" and row["status"] == "ok"
        assert mon.recorder.count() == 9 and mon.recorder.count_errors() == 1
        assert mon.metric("ragstream_monitor_answers_total", status="ok") == 9


def test_restart_without_new_traffic_changes_nothing(mon: Mon) -> None:
    """(c) after a restart, rows and their content stay, and redelivered events are not counted again."""
    triples = [_events(i) for i in range(3)]
    for req, prompt, resp in triples:
        for kind, ev in (("requests", req), ("prompts", prompt), ("responses", resp)):
            mon.produce(kind, encode(ev), str(req.request_id))
    with mon.running():
        _wait(
            lambda: all((r := mon.recorder.get(t[0].request_id)) is not None and r["status"] == "ok" for t in triples),
            what="3 rows",
        )
        _wait(lambda: mon.metric("ragstream_monitor_answers_total", status="ok") == 3)
    before = {t[0].request_id: mon.recorder.get(t[0].request_id) for t in triples}
    assert mon.recorder.count() == 3
    # Offsets were committed after the write: nothing is left to redeliver.
    assert mon.committed_equals_end()

    with mon.running():
        # A marker request proves the restarted monitor is consuming before we look at its counters.
        marker = Request(query="marker")
        mon.produce("requests", encode(marker), str(marker.request_id))
        _wait(lambda: mon.recorder.get(marker.request_id), what="the marker row")
        _wait(lambda: mon.metric("ragstream_monitor_requests_total") >= 1)
        time.sleep(1.0)
        assert mon.recorder.count() == 4
        for rid, row in before.items():
            assert mon.recorder.get(rid) == row  # same content, same updated_at: nothing rewritten
        assert mon.metric("ragstream_monitor_requests_total") == 1  # only the marker
        assert mon.metric("ragstream_monitor_prompts_total") == 0
        assert mon.metric("ragstream_monitor_answers_total", status="ok") == 0


def test_crash_before_the_write_redelivers(mon: Mon) -> None:
    """Events consumed but not yet written when the process dies are not committed, and come back."""
    req, prompt, resp = _events(0)
    with mon.running(killed=True) as proc:
        holder = mon.pool.getconn()
        try:
            # Block the monitor's writes: it consumes the events, then waits on the table lock.
            holder.execute(f'LOCK TABLE "{mon.table}" IN ACCESS EXCLUSIVE MODE')
            for kind, ev in (("requests", req), ("prompts", prompt), ("responses", resp)):
                mon.produce(kind, encode(ev), str(req.request_id))

            def write_blocked() -> bool:
                with mon.pool.connection() as conn:
                    row = conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
                        (f"%{mon.table}%",),
                    ).fetchone()
                return bool(row and row[0])

            _wait(write_blocked, what="the monitor to consume the events and wait on the table lock")
            time.sleep(4.0)  # longer than faust's commit interval (2.8 s)
            proc.kill()
            proc.wait(30)
        finally:
            holder.rollback()
            mon.pool.putconn(holder)
    assert mon.recorder.count() == 0
    assert not mon.committed_equals_end()  # the consumed events were not committed
    with mon.running():
        row = _wait(
            lambda: (r := mon.recorder.get(req.request_id)) is not None and r["status"] == "ok" and r,
            what="the redelivered events",
        )
        assert row["query"] == req.query and row["answer"] == resp.answer
        _wait(lambda: mon.metric("ragstream_monitor_answers_total", status="ok") == 1)
