"""B2 latency per hop: what the pipeline adds to a request's latency, per Kafka hop, against a bare
confluent-kafka consume-and-produce ping-pong on the same broker.

Pipeline side: requests through client → retriever → generator → client (three Kafka hops) with a fast
simulated LLM. For each answer, the added latency is the client's send → answer time minus the work a
direct call would also do, as the stages report it in ``timings_ms`` (``embed_ms``, ``search_ms``,
``prompt_ms``, ``llm_total_ms``); per hop it is that divided by 3. Everything else counts as the pipeline's:
Kafka, (de)serialisation, the generator's answer-store lookup, the loops' scheduling.

Reference side: a bare ping-pong. An echo process consumes topic A and produces each message to topic B
(plain ``Consumer.poll`` / ``Producer.produce``); this process produces to A and consumes B. Per hop =
round trip / 2. The clients use the same settings as the pipeline's (the echo's producer the workers'
``linger.ms``, idempotent, acks=all, lz4; consumers ``fetch.wait.max.ms`` 10), so the ratio is the cost of
our loops, not of configuration.

Loads: one request in flight (closed loop of one caller), and an open loop at half of the pipeline's
saturation (its maximum rate measured first with a backlog); the reference runs at the same offered rate.
Each run's figure is its p50 (or p99) of per-hop latency in ms; a side's figure is the median over runs.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bench.core import CpuMeter, Row, Run, Side, alternate, percentile
from bench.env import BenchEnv, questions
from bench.flows import burst, open_loop, pipeline_loop
from devstack.stack import REPO_ROOT
from workers.client import RagClient
from workers.contracts.messages import Response
from workers.settings import KafkaSettings

SERVICES = ("kafka", "postgres", "llm")
HOPS = 3
NEW_TOKENS = 4
WORK_KEYS = ("embed_ms", "search_ms", "prompt_ms", "llm_total_ms")
TARGET_P50_MS = 2.0
TARGET_P50_RATIO = 1.5
TARGET_P99_MS = 10.0


def _per_hop_ms(latency_s: float, resp: Response) -> float:
    """Added latency per hop (ms) of one answer: send → answer minus the stages' own work, over 3 hops."""
    work = sum(float(resp.timings_ms.get(k, 0.0)) for k in WORK_KEYS)
    return max(0.0, latency_s * 1000.0 - work) / HOPS


def _echo(bootstrap: str, in_topic: str, out_topic: str, linger_ms: float) -> None:
    """The reference's echo process: consume ``in_topic``, produce every message to ``out_topic``, until
    SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-echo-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "latest",
            "fetch.wait.max.ms": 10,
            "enable.auto.commit": True,
        }
    )
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": linger_ms,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "lz4",
        }
    )
    c.subscribe([in_topic])
    while not stop.is_set():
        m = c.poll(0.05)
        if m is not None and m.error() is None:
            p.produce(out_topic, value=m.value(), key=m.key())
        p.poll(0)
    p.flush(5)
    c.close()


class PingPong:
    """The bare reference: an echo process between two fresh topics, and a pinger here.

    Args:
        bootstrap: Kafka bootstrap servers.
        linger_ms: the echo producer's ``linger.ms`` (the workers' setting).
    """

    def __init__(self, bootstrap: str, linger_ms: float) -> None:
        tag = uuid.uuid4().hex[:8]
        self.a, self.b = f"bench-ping-{tag}", f"bench-pong-{tag}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for fut in admin.create_topics([NewTopic(t, 1, 1) for t in (self.a, self.b)]).values():
            fut.result(timeout=60)
        self.topics = [self.a, self.b]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.b2_hops", bootstrap, self.a, self.b, str(linger_ms)], cwd=REPO_ROOT
        )
        self.p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "enable.idempotence": True, "acks": "all"})
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-pong-{tag}", "fetch.wait.max.ms": 10})
        _low, high = self.c.get_watermark_offsets(TopicPartition(self.b, 0), timeout=10)
        self.c.assign([TopicPartition(self.b, 0, high)])
        for _ in range(600):  # until the echo answers (its group join takes a few seconds)
            if self.round_trips(1, 0.0, timeout_s=0.5):
                break

    def round_trips(self, n: int, rate_per_s: float, timeout_s: float = 60.0) -> list[float]:
        """``n`` pings, one at a time (``rate_per_s`` 0) or at a fixed rate; per-hop latencies (ms) of the
        pongs that came back."""
        sent: dict[bytes, float] = {}
        hops: list[float] = []
        t0 = time.perf_counter()
        gap = 1.0 / rate_per_s if rate_per_s > 0 else 0.0
        i = 0
        deadline = t0 + timeout_s
        while (i < n or len(hops) < i) and time.perf_counter() < deadline:
            due = i < n and (gap == 0.0 and len(hops) == i or gap > 0.0 and time.perf_counter() >= t0 + i * gap)
            if due:
                key = uuid.uuid4().bytes
                sent[key] = time.perf_counter()
                self.p.produce(self.a, value=b"x" * 200, key=key)
                self.p.poll(0)
                i += 1
                continue
            wait = 0.05 if gap == 0.0 or i >= n else max(0.0, min(0.05, t0 + i * gap - time.perf_counter()))
            m = self.c.poll(wait)
            pong = m.key() if m is not None and m.error() is None else None
            if pong is not None and pong in sent:
                hops.append((time.perf_counter() - sent.pop(pong)) * 1000.0 / 2)
        return hops

    def close(self) -> None:
        """Stop the echo process and close the clients."""
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.p.flush(5)
        self.c.close()


def run(env: BenchEnv, *, quick: bool, runs: int, options: dict[str, Any]) -> list[Row]:
    """Measure B2 at one in flight and at half of saturation; four rows (p50 and p99 of each)."""
    env.llm_config(ttft_ms=5.0, per_token_ms=1.0, capacity=64, max_concurrent_requests=256)
    env.ensure_corpus()
    n_serial = 30 if quick else 200
    n_half = 100 if quick else 600
    prefix = env.make_topics()
    settings = env.settings_for(prefix)
    qs = questions()
    rows: list[Row] = []
    with env.workers(prefix, {"retriever": 1, "generator": 1}) as pipe, RagClient(settings) as client:
        pids = [wp.proc.pid for wp in pipe.procs]
        pipe_meter = CpuMeter([*pids, *env.service_pids("kafka", "llm", "postgres")])
        pp = PingPong(env.stack.bootstrap_servers, KafkaSettings().linger_ms)
        env.topics_made.extend(pp.topics)
        ref_meter = CpuMeter([pp.proc.pid, *env.service_pids("kafka")])
        try:
            pipeline_loop(client, qs, 2, 20, NEW_TOKENS)  # warm-up
            sat = burst(client, qs, 60 if quick else 200, NEW_TOKENS)
            half_rate = 0.5 * sat.count / sat.wall_s
            cases: list[tuple[str, float, int]] = [("1 in flight", 0.0, n_serial), ("half sat", half_rate, n_half)]
            for label, rate, n in cases:

                def pipe_side(rate: float = rate, n: int = n) -> Run:
                    c0 = pipe_meter.total()
                    if rate == 0.0:
                        r = pipeline_loop(client, qs, 1, n, NEW_TOKENS)
                    else:
                        r = open_loop(client, qs, rate, n, NEW_TOKENS)
                    hops = [_per_hop_ms(lat, resp) for lat, resp in zip(r.latencies_s, r.responses, strict=True)]
                    return Run(percentile(hops, 50), r.count, pipe_meter.total() - c0, {"p99": percentile(hops, 99)})

                def ref_side(rate: float = rate, n: int = n) -> Run:
                    c0 = ref_meter.total()
                    hops = pp.round_trips(n, rate)
                    return Run(percentile(hops, 50), len(hops), ref_meter.total() - c0, {"p99": percentile(hops, 99)})

                a_runs, b_runs = alternate(pipe_side, ref_side, runs)
                a50, b50 = Side("pipeline", "ms/hop", a_runs), Side("bare ping-pong", "ms/hop", b_runs)
                load = "1 in flight" if rate == 0.0 else f"open loop {rate:.1f} req/s (half of {2 * rate:.1f})"
                row = Row(
                    f"B2 {label} p50",
                    "p50 ms/hop pipeline / bare",
                    a50,
                    b50,
                    target=f"<= {TARGET_P50_MS} ms and <= {TARGET_P50_RATIO}x",
                    note=f"{load}; {n} requests per run, {HOPS} hops",
                )
                row.ok = a50.median <= TARGET_P50_MS and (row.ratio or 99.0) <= TARGET_P50_RATIO
                rows.append(row)
                a99 = Side("pipeline", "ms/hop", [Run(r.extra["p99"], r.requests, r.cpu_s) for r in a_runs])
                b99 = Side("bare ping-pong", "ms/hop", [Run(r.extra["p99"], r.requests, r.cpu_s) for r in b_runs])
                row = Row(
                    f"B2 {label} p99",
                    "p99 ms/hop pipeline / bare",
                    a99,
                    b99,
                    target=f"<= {TARGET_P99_MS} ms",
                    note=load,
                )
                row.ok = a99.median <= TARGET_P99_MS
                rows.append(row)
        finally:
            pp.close()
    return rows


if __name__ == "__main__":  # the echo process of the reference: python -m bench.b2_hops BOOTSTRAP IN OUT LINGER_MS
    _echo(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
