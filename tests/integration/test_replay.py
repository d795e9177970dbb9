"""``ragstream replay`` on the real broker: bounded ranges by offset, time and request id, shadow topics,
no lost records with a tiny producer queue, and no effect on the live topic or live consumer groups."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from workers.contracts.messages import Request
from workers.contracts.serde import encode
from workers.evaluation.replay import replay
from workers.evaluation.replay_plan import build_plan
from workers.kafka.reader import committed_offsets
from workers.settings import KafkaSettings, Settings, TopicSettings

CLI = [sys.executable, "-m", "workers.cli"]


@dataclass(frozen=True)
class Env:
    """One test's names: live settings (prefix ``t<unique>.``), the shadow prefix template, a topics file."""

    settings: Settings
    live: str
    shadow_template: str
    topics_file: Path
    bootstrap: str

    def shadow(self, run: str) -> str:
        return self.shadow_template.replace("{run}", run) + "rag.requests"


@pytest.fixture
def env(stack: Any, unique: str, tmp_path: Path) -> Iterator[Env]:
    """Settings for one test; every topic whose name starts with ``t<unique>.`` is deleted afterwards."""
    prefix = f"t{unique}."
    tf = tmp_path / "topics.yaml"
    # A small topics file: the shadow set of each run is created from it (one topic, 2 partitions).
    tf.write_text("topics:\n  - name: rag.requests\n    partitions: 2\n", encoding="utf-8")
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=stack.bootstrap_servers), topics=TopicSettings(prefix=prefix)
    )
    yield Env(settings, settings.topics.name("requests"), prefix + "eval.{run}.", tf, stack.bootstrap_servers)
    admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
    mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
    if mine:
        for fut in admin.delete_topics(mine, operation_timeout=30).values():
            try:
                fut.result(timeout=30)
            except KafkaException:  # already deleted by make_topics
                pass


def _produce(
    bootstrap: str,
    topic: str,
    requests: list[Request],
    *,
    timestamps: list[int] | None = None,
    partition: Callable[[int], int] | None = None,
) -> list[bytes]:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    values = []
    for i, r in enumerate(requests):
        value = encode(r)
        values.append(value)
        kwargs: dict[str, Any] = {}
        if timestamps is not None:
            kwargs["timestamp"] = timestamps[i]
        if partition is not None:
            kwargs["partition"] = partition(i)
        p.produce(topic, value, key=str(r.request_id), headers=[("request_id", str(r.request_id))], **kwargs)
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(30) == 0
    return values


@dataclass(frozen=True)
class Rec:
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]


def _read_all(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[Rec]:
    """Every record of a topic up to its current end, without a consumer group."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False})
    try:
        parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
        marks = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False) for p in parts}
        want = sum(h - lo for lo, h in marks.values())
        if want == 0:
            return []
        c.assign([TopicPartition(topic, p, lo) for p, (lo, h) in marks.items() if h > lo])
        out: list[Rec] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < want and time.monotonic() < deadline:
            for m in c.consume(500, timeout=0.5):
                if m.error() is None:
                    hdrs = {k: (v or b"").decode() for k, v in (m.headers() or [])}
                    out.append(Rec(m.partition(), m.offset(), m.key(), m.value(), hdrs))
        assert len(out) == want, f"read {len(out)} of {want} records from {topic}"
        return out
    finally:
        c.close()


def _watermarks(bootstrap: str, topic: str) -> dict[int, tuple[int, int]]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False})
    try:
        parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False) for p in parts}
    finally:
        c.close()


def _replay(env: Env, run: str, **plan: Any) -> Any:
    return replay(env.settings, build_plan(**plan), run=run, prefix=env.shadow_template, topics_file=env.topics_file)


def test_offsets_and_times_select_the_right_records(env: Env, make_topics: Any) -> None:
    make_topics([env.live], partitions=1)
    t0 = int(time.time() * 1000) - 600_000  # ten minutes ago, one second apart
    stamps = [t0 + i * 1000 for i in range(10)]
    values = _produce(env.bootstrap, env.live, [Request(query=f"q{i}") for i in range(10)], timestamps=stamps)

    rep = _replay(env, "off5", from_offset=5)
    assert (rep.read, rep.produced, rep.failed) == (5, 5, 0) and rep.ok
    got = _read_all(env.bootstrap, env.shadow("off5"))
    assert sorted(r.value for r in got) == sorted(values[5:])
    assert sorted(int(r.headers["replay_source"].rsplit("/", 1)[1]) for r in got) == [5, 6, 7, 8, 9]
    assert all(r.headers["replay_run"] == "off5" for r in got)
    assert all(r.headers["replay_source"].startswith(f"{env.live}/0/") for r in got)
    assert all(r.key == r.headers["request_id"].encode() for r in got)  # key and request id kept

    after = datetime.fromtimestamp(stamps[-1] / 1000, UTC) + timedelta(hours=1)
    started = time.monotonic()
    rep = _replay(env, "late", since=after)
    assert time.monotonic() - started < 15
    assert (rep.read, rep.selected, rep.produced) == (0, 0, 0)
    assert rep.partitions[0].start == rep.partitions[0].end == 10

    before = datetime.fromtimestamp(stamps[0] / 1000, UTC) - timedelta(hours=1)
    rep = _replay(env, "all", since=before)
    assert (rep.read, rep.produced) == (10, 10)
    assert sorted(r.value for r in _read_all(env.bootstrap, env.shadow("all"))) == sorted(values)

    # A time window inside the range: records T3..T6 (until is exclusive).
    since = datetime.fromtimestamp(stamps[3] / 1000, UTC)
    until = datetime.fromtimestamp(stamps[7] / 1000, UTC)
    rep = _replay(env, "window", since=since, until=until)
    assert rep.produced == 4
    assert sorted(r.value for r in _read_all(env.bootstrap, env.shadow("window"))) == sorted(values[3:7])


def test_mid_offset_right_after_topic_creation(env: Env, make_topics: Any) -> None:
    make_topics([env.live], partitions=3)
    values = _produce(env.bootstrap, env.live, [Request(query=f"q{i}") for i in range(15)], partition=lambda i: i % 3)
    rep = _replay(env, "mid", from_offset=2)  # assigns at offset 2 at once: no erroneous-state seek
    assert [(p.partition, p.start, p.end, p.read) for p in rep.partitions] == [(0, 2, 5, 3), (1, 2, 5, 3), (2, 2, 5, 3)]
    assert rep.produced == 9 and rep.ok
    got = _read_all(env.bootstrap, env.shadow("mid"))
    assert len(got) == 9 and {r.value for r in got} <= set(values)
    assert all(int(r.headers["replay_source"].rsplit("/", 1)[1]) >= 2 for r in got)

    rep = _replay(env, "spec", offsets="0:1-2,2:3-")
    assert [(p.partition, p.read) for p in rep.partitions] == [(0, 2), (1, 0), (2, 2)]
    assert rep.produced == 4


def test_request_ids_keep_only_matches(env: Env, make_topics: Any) -> None:
    make_topics([env.live], partitions=3)
    reqs = [Request(query=f"q{i}") for i in range(20)]
    _produce(env.bootstrap, env.live, reqs)
    wanted = [reqs[1].request_id, reqs[7].request_id, reqs[19].request_id]
    absent = uuid.uuid4()
    rep = _replay(env, "ids", request_ids=[*wanted, absent])
    assert (rep.read, rep.selected, rep.produced) == (20, 3, 3)
    assert rep.missing_request_ids == [absent]
    got = _read_all(env.bootstrap, env.shadow("ids"))
    assert sorted(r.headers["request_id"] for r in got) == sorted(str(w) for w in wanted)


def test_five_thousand_records_through_a_tiny_producer_queue(env: Env, make_topics: Any) -> None:
    make_topics([env.live], partitions=3)
    values = _produce(env.bootstrap, env.live, [Request(query=f"question {i}") for i in range(5000)])
    rep = replay(
        env.settings,
        build_plan(),
        run="bulk",
        prefix=env.shadow_template,
        topics_file=env.topics_file,
        producer_overrides={"queue.buffering.max.messages": 100},
    )
    assert (rep.read, rep.selected, rep.produced, rep.failed) == (5000, 5000, 5000, 0)
    assert env.shadow("bulk") in rep.topics_created
    assert rep.queue_full_waits > 0  # the tiny queue was full, and waited out rather than dropped
    got = _read_all(env.bootstrap, env.shadow("bulk"))
    assert len(got) == 5000
    assert sorted(r.value for r in got) == sorted(values)


def test_live_topic_and_live_groups_are_untouched(env: Env, make_topics: Any) -> None:
    make_topics([env.live], partitions=3)
    _produce(env.bootstrap, env.live, [Request(query=f"q{i}") for i in range(30)], partition=lambda i: i % 3)
    group = f"live-{uuid.uuid4().hex[:8]}"
    live = Consumer({"bootstrap.servers": env.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        commits = [TopicPartition(env.live, 0, 4), TopicPartition(env.live, 1, 7), TopicPartition(env.live, 2, 10)]
        live.commit(offsets=commits, asynchronous=False)
        parts = [TopicPartition(env.live, p) for p in range(3)]
        committed_before = committed_offsets(live, parts)
        marks_before = _watermarks(env.bootstrap, env.live)

        rep = _replay(env, "iso")
        assert rep.produced == 30

        assert _watermarks(env.bootstrap, env.live) == marks_before
        assert (
            committed_offsets(live, parts)
            == committed_before
            == {
                (env.live, 0): 4,
                (env.live, 1): 7,
                (env.live, 2): 10,
            }
        )
    finally:
        live.close()
    # The replay's throwaway group committed nothing anywhere.
    admin = AdminClient({"bootstrap.servers": env.bootstrap})
    groups = admin.list_consumer_groups(request_timeout=10).result().valid
    for g in groups:
        if g.group_id.startswith("ragstream-replay-"):
            res = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(g.group_id)])
            offsets = next(iter(res.values())).result().topic_partitions or []
            assert not [tp for tp in offsets if tp.topic == env.live]


def test_cli_help_and_dry_run(env: Env, make_topics: Any) -> None:
    out = subprocess.run([*CLI, "replay", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout and "--dry-run" in out.stdout and "--since" in out.stdout

    make_topics([env.live], partitions=2)
    _produce(env.bootstrap, env.live, [Request(query=f"q{i}") for i in range(6)], partition=lambda i: i % 2)
    cli_env = {**os.environ, "RAG_KAFKA__BOOTSTRAP_SERVERS": env.bootstrap, "RAG_TOPICS__PREFIX": "t-unused."}
    args = [*CLI, "replay", "--topic", env.live, "--run", "cli", "--prefix", env.shadow_template]
    out = subprocess.run(
        [*args, "--from-offset", "1", "--dry-run"], env=cli_env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "4 records in range over 2 partitions" in out.stdout
    # The dry run created nothing.
    assert not [
        t for t in AdminClient({"bootstrap.servers": env.bootstrap}).list_topics(timeout=10).topics if ".eval.cli." in t
    ]

    out = subprocess.run([*args, "--offsets", "0:x"], env=cli_env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "0:x" in lines[0] and "Traceback" not in out.stderr

    missing = [*CLI, "replay", "--topic", env.live + "-missing", "--run", "cli", "--dry-run"]
    out = subprocess.run(missing, env=cli_env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "not found" in out.stderr and "Traceback" not in out.stderr

    out = subprocess.run(
        [*args, "--topics-file", str(env.topics_file)],  # with the progress bar (stderr is not a terminal)
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "produced=6 request_ids=6 failed=0" in out.stdout
