"""Worker processes and loops under rebalances, slow LLM calls, kill -9 and SIGTERM (issue 3, inputs 1, 2, 3, 5).

Real broker, PostgreSQL and the simulated LLM server; the generator runs as ``ragstream run generator``
processes (devstack.pipeline), as in production.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer

from devstack._proc import free_port
from devstack.pipeline import Pipeline
from devstack.stack import Stack, StackConfig
from tests.kafka_helpers import committed_and_end, drain, produce
from workers.contracts.messages import ChatMessage, Prompt, Request, Response
from workers.contracts.serde import decode, encode
from workers.kafka.config import consumer_config
from workers.kafka.loop import LoopConfig, WorkerLoop
from workers.kafka.producer import KafkaProducer
from workers.settings import KafkaSettings, TopicSettings
from workers.stream.records import Incoming, Output


def _prompt(q: str) -> Prompt:
    req = Request(query=q, generation={"max_new_tokens": 4})
    return Prompt(
        request_id=req.request_id, request=req, passages=[], messages=[ChatMessage(role="user", content=q)],
        template_id="t", template_hash="0", prompt_tokens=4, max_new_tokens=4,
    )  # fmt: skip


def _generator_env(
    bootstrap: str, database_url: str, llm_url: str, prefix: str, unique: str, **extra: str
) -> dict[str, str]:
    env = {
        "RAG_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "RAG_DATABASE_URL": database_url,
        "RAG_LLM__URL": llm_url,
        "RAG_TOPICS__PREFIX": prefix,
        "RAG_GENERATOR__ANSWER_TABLE": f"answers_{unique}",
        "RAG_WORKER__SHUTDOWN_TIMEOUT_S": "8",
        "RAG_LLM__TIMEOUT_S": "60",
    }
    env.update(extra)
    return env


def _topics(make_topics: Any, unique: str, tag: str) -> TopicSettings:
    t = TopicSettings(prefix=f"{tag}{unique}.")
    make_topics([t.name("prompts"), t.name("responses"), t.name("dead_letter")], partitions=3)
    return t


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


@pytest.mark.slow
def test_llm_call_longer_than_max_poll_interval(
    stack: Any, sim_llm: Any, unique: str, make_topics: Any, tmp_path: Path
) -> None:
    """max.poll.interval.ms = 10 s, the server takes 15 s, two replicas: each request answered once, neither
    replica leaves the group for good, and a fourth prompt sent afterwards is still answered."""
    sim_llm.reset(ttft_ms=15_000, per_token_ms=1)
    t = _topics(make_topics, unique, "mp")
    env = _generator_env(stack.bootstrap_servers, stack.database_url, sim_llm.url, t.prefix, unique,
                         RAG_KAFKA__MAX_POLL_INTERVAL_MS="10000", RAG_KAFKA__SESSION_TIMEOUT_MS="6000")  # fmt: skip
    pipe = Pipeline(env=env, log_dir=tmp_path, replicas={"generator": 2})
    pipe.start()
    try:
        pipe.wait_ready(120)
        first = [_prompt(f"slow {i}") for i in range(3)]
        produce(stack.bootstrap_servers, t.name("prompts"), [(str(p.request_id), encode(p)) for p in first])
        got = [decode(v, Response) for v in drain(stack.bootstrap_servers, t.name("responses"), 3, 90, 2)]
        assert sorted(r.request_id for r in got) == sorted(p.request_id for p in first)
        fourth = _prompt("after the slow ones")
        produce(stack.bootstrap_servers, t.name("prompts"), [(str(fourth.request_id), encode(fourth))])
        got = [decode(v, Response) for v in drain(stack.bootstrap_servers, t.name("responses"), 4, 90, 2)]
        assert sorted(r.request_id for r in got) == sorted(p.request_id for p in [*first, fourth])
        assert all(r.status == "ok" for r in got)
        for wp in pipe.procs:
            assert wp.proc.poll() is None, f"{wp.worker}-{wp.index} exited"
            assert "MAXPOLL" not in wp.log_text() and "lost role=" not in wp.log_text()
    finally:
        codes = pipe.stop()
    assert all(c == 0 for c in codes.values()), codes


@pytest.mark.slow
def test_kill_9_mid_llm_call_then_restart_answers_once(
    stack: Any, sim_llm: Any, unique: str, make_topics: Any, tmp_path: Path
) -> None:
    sim_llm.reset(ttft_ms=4_000, per_token_ms=1)
    t = _topics(make_topics, unique, "k9")
    env = _generator_env(stack.bootstrap_servers, stack.database_url, sim_llm.url, t.prefix, unique)
    pipe = Pipeline(env=env, log_dir=tmp_path, replicas={"generator": 1})
    pipe.start()
    try:
        pipe.wait_ready(120)
        p = _prompt("in flight when killed")
        produce(stack.bootstrap_servers, t.name("prompts"), [(str(p.request_id), encode(p))])
        _wait(lambda: sim_llm.stats()["in_flight"] >= 1, 30, "the LLM call to start")
        victim = pipe.procs[0]
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(10)
        pipe.procs.remove(victim)
        assert drain(stack.bootstrap_servers, t.name("responses"), 1, 0.5, 0.5) == []  # nothing was produced
        pipe.start_one("generator", 1)
        got = [decode(v, Response) for v in drain(stack.bootstrap_servers, t.name("responses"), 1, 90, 5)]
        assert [r.request_id for r in got] == [p.request_id]  # answered exactly once
        assert got[0].status == "ok"
        _, ends = committed_and_end(stack.bootstrap_servers, t.prefix + "generator", t.name("prompts"), 3)
        _wait(
            lambda: committed_and_end(stack.bootstrap_servers, t.prefix + "generator", t.name("prompts"), 3)[0]
            == ends, 15, "the offset to be committed",
        )  # fmt: skip
    finally:
        pipe.stop()


def test_scale_out_commits_what_is_done_on_revoke(stack: Any, unique: str, make_topics: Any) -> None:
    """One replica processed 15 requests without committing; a second joins: the output topic ends with the
    15 ids once each (the first replica commits what is done when its partitions are revoked)."""
    t = TopicSettings(prefix=f"so{unique}.")
    make_topics([t.name("requests"), t.name("prompts"), t.name("dead_letter")], partitions=4)
    kafka = KafkaSettings(bootstrap_servers=stack.bootstrap_servers)
    group = f"scale-{unique}"

    async def forward(batch: list[Incoming]) -> Sequence[Sequence[Output]]:
        return [[Output(topic=t.name("prompts"), value=inc.value or b"", key=inc.key)] for inc in batch]

    def make_loop() -> WorkerLoop:
        # auto-commit effectively off: only the commit on revoke (or shutdown) stores progress in the group
        consumer = Consumer(consumer_config(kafka, group, **{"auto.commit.interval.ms": 600_000}))
        return WorkerLoop(
            LoopConfig(role="retriever", topics=[t.name("requests")], dead_letter_topic=t.name("dead_letter"),
                       max_in_flight=64, batch_max=8, shutdown_timeout_s=10),  # fmt: skip
            consumer, KafkaProducer(kafka, poll_after_produce=False), forward,
        )  # fmt: skip

    ids = [str(uuid.uuid4()) for _ in range(15)]
    produce(stack.bootstrap_servers, t.name("requests"), [(i, i.encode()) for i in ids])

    async def run() -> list[bytes]:
        a = make_loop()
        ta = asyncio.create_task(a.run())
        out = await asyncio.to_thread(drain, stack.bootstrap_servers, t.name("prompts"), 15, 60, 0.5)
        assert len(out) == 15
        committed, _ = committed_and_end(stack.bootstrap_servers, group, t.name("requests"), 4)
        assert sum(committed) == 0  # processed, nothing committed yet
        b = make_loop()
        tb = asyncio.create_task(b.run())
        await asyncio.to_thread(b.started.wait, 60)
        await asyncio.sleep(3)  # let the rebalance settle; b consumes from what a committed
        final = await asyncio.to_thread(drain, stack.bootstrap_servers, t.name("prompts"), 16, 3, 2)
        a.request_stop()
        b.request_stop()
        await asyncio.gather(ta, tb)
        return final

    final = asyncio.run(run())
    assert sorted(v.decode() for v in final) == sorted(ids)


def test_sigterm_right_after_an_output_and_with_the_broker_gone(
    stack: Any, sim_llm: Any, unique: str, tmp_path: Path
) -> None:
    """SIGTERM 10 ms after the output: it is in the topic and the input committed, or the input is processed
    again after restart (and re-emitted, not regenerated). With the broker stopped first, the worker still
    exits within its bound."""
    home = tmp_path / "kafka"
    private = Stack(StackConfig(home=home, kafka_port=free_port(), services=("kafka",)))
    private.up()
    try:
        from confluent_kafka.admin import AdminClient, NewTopic

        t = TopicSettings(prefix=f"st{unique}.")
        admin = AdminClient({"bootstrap.servers": private.bootstrap_servers})
        for fut in admin.create_topics(
            [NewTopic(t.name(n), 3, 1) for n in ("prompts", "responses", "dead_letter")]
        ).values():
            fut.result()
        env = _generator_env(private.bootstrap_servers, stack.database_url, sim_llm.url, t.prefix, unique)
        pipe = Pipeline(env=env, log_dir=tmp_path / "logs", replicas={"generator": 1})
        pipe.start()
        pipe.wait_ready(120)
        p = _prompt("sigterm race")
        produce(private.bootstrap_servers, t.name("prompts"), [(str(p.request_id), encode(p))])
        c = Consumer({"bootstrap.servers": private.bootstrap_servers, "group.id": f"w-{unique}",
                      "auto.offset.reset": "earliest"})  # fmt: skip
        c.subscribe([t.name("responses")])
        deadline = time.monotonic() + 60
        while not [m for m in c.consume(10, 0.01) if m.error() is None]:
            assert time.monotonic() < deadline
        time.sleep(0.01)
        wp = pipe.procs[0]
        wp.proc.send_signal(signal.SIGTERM)
        assert wp.proc.wait(20) == 0
        c.close()
        committed, ends = committed_and_end(private.bootstrap_servers, t.prefix + "generator", t.name("prompts"), 3)
        pipe.procs.clear()
        if committed != ends:  # not committed in time: processed again after restart, from the answer store
            pipe.start_one("generator", 1)
            _wait(lambda: committed_and_end(private.bootstrap_servers, t.prefix + "generator",
                                            t.name("prompts"), 3)[0] == ends, 60, "commit after restart")  # fmt: skip
            pipe.stop()
        got = [decode(v, Response) for v in drain(private.bootstrap_servers, t.name("responses"), 1, 10, 1)]
        assert {r.request_id for r in got} == {p.request_id}
        assert len({r.created_at for r in got}) == 1  # never generated twice
        assert sim_llm.stats()["requests_seen"] == 1

        # the broker goes away first; SIGTERM must still end the worker within its bound (8 s + slack)
        pipe.start_one("generator", 2)
        pipe.wait_ready(120)
        private.down()
        wp = pipe.procs[-1]
        t0 = time.monotonic()
        wp.proc.send_signal(signal.SIGTERM)
        code = wp.proc.wait(30)
        elapsed = time.monotonic() - t0
        assert code == 0 and elapsed < 20, (code, elapsed)
    finally:
        private.down()
