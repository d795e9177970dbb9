"""``python -m bench.chaos``: the chaos run of issue 3 — crashes, outages and bad input under steady load.

The run starts a stack of its own (``.devstack/chaos``, ports 39092/35432/38080, the simulated LLM engine),
creates the four topics under a unique prefix, ingests a corpus (Python's reference docs) and starts several
replicas of each worker (:class:`devstack.pipeline.Pipeline`). A load generator then submits requests with
:class:`workers.client.RagClient` at a steady rate while a fault schedule runs at random moments:

* each worker type SIGKILLed ``--kills`` times (a supervisor restarts every exited worker, as an orchestrator
  would: after a kill 1 s later, after a crash 3 s later);
* the broker restarted once (stopped and started again on the same data);
* the LLM server answering 503 "loading" for 20 s (``POST /admin/faults``);
* PostgreSQL restarted once;
* chat completions streamed through two gateway replicas (``ragstream run gateway``) all along, while the
  generators are killed, the broker restarts and the LLM answers 503 (:mod:`bench.chaos_streams`);
* malformed messages injected into the requests topic, 6 kinds (not JSON, wrong schema_version, a missing
  field, oversized: larger than the workers' ``message.max.bytes`` but within the broker's, invalid UTF-8, a
  Request without its ``request_id``), each keyed ``bad-<kind>-<n>``.

Then it waits until every request id is answered (or a timeout), reads the responses and dead-letter topics
from the beginning and checks every request id against what came out. It prints a table and exits 1 when a
check fails:

* lost requests: no Response at all on the responses topic for a request id — must be 0;
* requests delivered more than once to the client (RagClient futures resolved) — must be 0; duplicates on
  the topic are allowed and reported (the client counts and drops them);
* LLM calls for requests already answered: a Response that needed an LLM call (new ``created_at``; a
  re-emitted stored answer keeps the stored one) whose generation started after a final answer (ok, error,
  expired) of the same request id was produced — must be 0;
* every malformed message in the dead-letter topic (matched by key and raw bytes) with its error class and
  message;
* every malformed message whose body names a request id answered ``rejected`` on the responses topic (a client
  waiting on that id is not left to its timeout).

* every stream complete (finish_reason, ``[DONE]``), ended with an error chunk, or refused with an OpenAI error
  before it began — none cut or malformed; every complete stream's text equal to its request's Response (none
  mixed); every accepted stream's request id answered on the topic.

Statuses other than ``ok`` are answers (``model_unavailable`` during the 503 window); they are counted by
status. ``--quick`` is a short run (200 requests and 40 streams, one kill per worker type).
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import logging
import os
import random
import re
import string
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.chaos_streams import StreamLoad, gateway_counters, stream_checks
from devstack.pipeline import Pipeline, WorkerProcess
from devstack.stack import REPO_ROOT, Stack, StackConfig
from workers.client import RagClient
from workers.contracts.messages import FINAL_STATUSES, DeadLetter, GenerationParams, Request, Response
from workers.contracts.serde import decode
from workers.contracts.topics import load_topics
from workers.evaluation.dlq import DeadLetterRecord, read_dead_letters
from workers.gateway.limits import new_key
from workers.kafka.admin import admin_client, apply_topics
from workers.kafka.producer import KafkaProducer
from workers.kafka.reader import TopicRecord
from workers.kafka.reader import read_topic as kafka_read_topic
from workers.ports import resolve_port
from workers.settings import KafkaSettings, Settings, load_settings

log = logging.getLogger("bench.chaos")

CHAOS_HOME = REPO_ROOT / ".devstack" / "chaos"
QUESTIONS = REPO_ROOT.parent / "shared" / "data" / "questions_public.jsonl"
#: The six kinds of malformed messages injected into the requests topic.
MALFORMED_KINDS = (
    "not_json", "wrong_schema_version", "missing_field", "oversized", "invalid_utf8", "missing_request_id",
)  # fmt: skip
#: A later generation must start this long (s) after a final answer to count as "LLM call for an answered
#: request"; closer ones are concurrent duplicates (both replicas looked the id up before either stored it).
RACE_SLACK_S = 0.5
#: Queries used when the public questions file is not there.
FALLBACK_QUERIES = (
    "What does the with statement do?",
    "How does the try statement handle exceptions?",
    "What is a lambda expression?",
    "How are default argument values evaluated?",
)


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class ChaosOptions:
    """What one chaos run does (see the module docstring).

    Attributes:
        requests: requests sent by the load generator.
        rate: requests per second (steady).
        kills: SIGKILLs per worker type during the load.
        replicas: worker processes per worker type.
        malformed_per_kind: malformed messages of each of the six kinds (≥ 10 gives ≥ 60 in all).
        oversize_bytes: size of an "oversized" message (bytes): above the workers' ``message.max.bytes``
            (4 MiB) and below the broker's (8 MiB).
        llm_outage_s: seconds the LLM server answers 503 "loading".
        broker_restarts: broker restarts during the load.
        postgres_restarts: PostgreSQL restarts during the load.
        answer_timeout_s: seconds to wait for the last answers after the last request was sent and the fault
            schedule ended.
        corpus_docs: Python doc topics ingested (0: all 79).
        max_new_tokens: generation budget per request (tokens).
        seed: random seed of the schedule and the payloads (None: random).
        keep_stack: leave the stack running afterwards (the next run reuses it and its corpus).
        home: stack home folder.
        kafka_port: broker port (the controller uses the next one).
        pg_port: PostgreSQL port.
        llm_port: LLM server port.
        session_timeout_ms: the workers' consumer session timeout: how long a killed member holds its partitions.
        gateways: gateway replicas (``ragstream run gateway``, replica i on reply partition i; 0: none).
        streams: chat completions streamed through the gateways during the load (spread evenly, round-robin;
            :mod:`bench.chaos_streams`).
        stream_tokens: ``max_tokens`` of a stream (plus 0-15): long enough (about 1.5 s at the simulated engine's
            2 ms/token) that a generator kill often lands mid-stream.
    """

    requests: int = 2000
    rate: float = 10.0
    kills: int = 3
    replicas: dict[str, int] = field(default_factory=lambda: {"retriever": 2, "generator": 2, "monitor": 2})
    malformed_per_kind: int = 10
    oversize_bytes: int = 4 * 1024 * 1024 + 64 * 1024
    llm_outage_s: float = 20.0
    broker_restarts: int = 1
    postgres_restarts: int = 1
    answer_timeout_s: float = 300.0
    corpus_docs: int = 0
    max_new_tokens: int = 16
    seed: int | None = None
    keep_stack: bool = False
    home: Path = CHAOS_HOME
    kafka_port: int = 39092
    pg_port: int = 35432
    llm_port: int = 38080
    session_timeout_ms: int = 10_000
    gateways: int = 2
    streams: int = 200
    stream_tokens: int = 600

    @property
    def load_seconds(self) -> float:
        """Duration of the load (s)."""
        return self.requests / self.rate


def _same_value(letter: DeadLetter, raw: bytes) -> bool:
    """The dead letter carries this raw value: whole, or (over the dead-letter value cap) its first bytes with
    ``value_truncated`` and the full length in ``value_bytes``."""
    kept = base64.b64decode(letter.value_b64)
    if letter.value_truncated:
        return letter.value_bytes == len(raw) and raw.startswith(kept)
    return kept == raw


def quick_options(**changes: Any) -> ChaosOptions:
    """The ``--quick`` run: 200 requests at 5/s and 40 streams, one kill per worker type, a 12-topic corpus."""
    base = ChaosOptions(requests=200, rate=5.0, kills=1, corpus_docs=12, answer_timeout_s=120.0, streams=40)
    return replace(base, **changes)


def stack_config(opts: ChaosOptions, services: tuple[str, ...] = ("kafka", "postgres", "llm")) -> StackConfig:
    """The chaos stack: simulated LLM (TTFT 20 ms, 2 ms/token, capacity 16) on the run's home and ports."""
    return StackConfig(
        home=opts.home,
        services=services,
        kafka_port=opts.kafka_port,
        pg_port=opts.pg_port,
        llm_port=opts.llm_port,
        llm_engine="simulated",
        llm_model="tiny",  # the simulated engine has no model; its prompt budgets use the tiny tokenizer
        llm_extra_args=(
            "--ttft-ms", "20", "--per-token-ms", "2", "--capacity", "16",
            "--max-concurrent-requests", "512", "--log-level", "WARNING",
        ),
    )  # fmt: skip


# --------------------------------------------------------------------------- helpers


def load_queries() -> list[str]:
    """The public questions' texts (or a few fixed ones when the file is missing)."""
    try:
        lines = QUESTIONS.read_text(encoding="utf-8").splitlines()
    except OSError:
        return list(FALLBACK_QUERIES)
    qs = [str(json.loads(line)["q"]) for line in lines if line.strip()]
    return qs or list(FALLBACK_QUERIES)


def ingest_corpus(stack: Stack, table: str, docs: int) -> str:
    """Ingest Python's reference docs (the first ``docs`` topics; 0: all) into ``table``; idempotent.

    Runs in a subprocess (the embedding model loads from its local folder, ``HF_HUB_OFFLINE=1``), so this
    process never imports torch.

    Returns:
        The ingest report line.

    Raises:
        RuntimeError: the ingest failed (its stderr tail is in the message).
    """
    code = (
        "import sys\n"
        "from workers.adapters.embedding import Embedder\n"
        "from workers.retriever.documents import python_docs_documents\n"
        "from workers.retriever.ingest import ingest\n"
        "from workers.adapters.pgvector import VectorStore\n"
        "from workers.adapters.postgres import open_pool\n"
        "from workers.settings import load_settings\n"
        "s = load_settings()\n"
        "n = int(sys.argv[1])\n"
        "docs = python_docs_documents()\n"
        "docs = docs[:n] if n else docs\n"
        "pool = open_pool(s.database_url.get_secret_value(), min_size=1, max_size=2, vector=True)\n"
        "emb = Embedder.from_settings(s.embedding)\n"
        "store = VectorStore(pool, table=s.retriever.table, dimension=emb.dimension)\n"
        "r = ingest(docs, emb, store, progress=False)\n"
        "print(f'documents={r.documents} chunks={r.chunks} inserted={r.inserted} rows={store.count()} '\n"
        "      f'seconds={r.seconds:.1f}')\n"
        "pool.close()\n"
    )
    env = {**os.environ, **stack.env(), "RAG_RETRIEVER__TABLE": table, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(docs)], env=env, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT
    )
    if out.returncode != 0:
        raise RuntimeError(f"corpus ingest failed:\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def read_topic(bootstrap: str, topic: str, timeout_s: float = 120.0) -> list[TopicRecord]:
    """Every message of ``topic`` up to the high watermarks at the call, read without a group
    (:func:`workers.kafka.read_topic`)."""
    return kafka_read_topic(KafkaSettings(bootstrap_servers=bootstrap), topic, timeout_s=timeout_s)


def malformed_value(kind: str, marker: str, oversize_bytes: int, rng: random.Random) -> bytes:
    """A malformed requests-topic value of one kind, carrying ``marker`` in its text.

    Kinds: ``not_json``, ``wrong_schema_version`` (a Request with ``schema_version`` 2), ``missing_field`` (no
    ``query``), ``oversized`` (a Request-shaped JSON of ``oversize_bytes`` bytes), ``invalid_utf8``,
    ``missing_request_id`` (a valid Request but for its ``request_id``, and no ``request_id`` header either).
    """
    now = datetime.now(UTC).isoformat()
    if kind == "not_json":
        return f"this is not JSON ({marker}) {{ query: ".encode()
    if kind == "wrong_schema_version":
        body = {"schema_version": 2, "request_id": str(uuid.uuid4()), "created_at": now, "query": marker}
        return json.dumps(body).encode()
    if kind == "missing_field":
        return json.dumps(
            {"schema_version": 1, "request_id": str(uuid.uuid4()), "created_at": now, "note": marker}
        ).encode()
    if kind == "oversized":
        head = json.dumps({"schema_version": 1, "request_id": str(uuid.uuid4()), "created_at": now, "query": ""})
        filler_len = max(0, oversize_bytes - len(head) - len(marker) - 1)
        filler = "".join(rng.choices(string.ascii_letters + " ", k=filler_len))
        return (head[:-3] + json.dumps(marker + " " + filler) + "}").encode()  # head ends '""}': the query's value
    if kind == "invalid_utf8":
        return b'{"schema_version": 1, "query": "' + marker.encode() + b' caf\xe9 \xff\xfe \xc3\x28"}'
    if kind == "missing_request_id":
        return json.dumps({"schema_version": 1, "created_at": now, "query": f"What does pass do? ({marker})"}).encode()
    raise ValueError(f"unknown malformed kind {kind!r}")


# --------------------------------------------------------------------------- supervisor


class Supervisor:
    """Restarts every worker process that exits, as an orchestrator would; kills on request.

    A process killed by :meth:`kill` is restarted after ``kill_restart_s``; one that exited on its own (a
    crash, or a start-up failure while the broker is away) after ``crash_restart_s`` and is recorded.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        kill_restart_s: float = 1.0,
        crash_restart_s: float = 3.0,
        envs: dict[tuple[str, int], dict[str, str]] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.envs = envs or {}  # (worker, index) → its own environment (a gateway's port and reply partition)
        self.kill_restart_s = kill_restart_s
        self.crash_restart_s = crash_restart_s
        self._lock = threading.Lock()
        self._killed: set[int] = set()
        self._due: list[tuple[float, str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-supervisor", daemon=True)
        self.unexpected_exits: list[str] = []
        self.restarts: Counter[str] = Counter()

    def start(self) -> None:
        """Start watching."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (nothing is restarted afterwards); pending restarts are started first."""
        self._stop.set()
        self._thread.join(10)
        with self._lock:
            due, self._due = self._due, []
        for _, worker, index in due:
            self.pipeline.start_one(worker, index, self.envs.get((worker, index)))

    def kill(self, worker: str, rng: random.Random) -> str:
        """SIGKILL one running replica of ``worker`` (chosen at random); returns which."""
        with self._lock:
            live = [wp for wp in self.pipeline.procs if wp.worker == worker and wp.proc.poll() is None]
            if not live:
                return f"no live {worker} to kill"
            wp = rng.choice(live)
            self._killed.add(wp.proc.pid)
            wp.proc.kill()
        return f"SIGKILL {worker}-{wp.index} pid={wp.proc.pid}"

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                for wp in list(self.pipeline.procs):
                    code = wp.proc.poll()
                    if code is None:
                        continue
                    self.pipeline.procs.remove(wp)
                    if wp.proc.pid in self._killed:
                        self._due.append((now + self.kill_restart_s, wp.worker, wp.index))
                    else:
                        self.unexpected_exits.append(f"{wp.worker}-{wp.index} exit={code}: {_last_line(wp)}")
                        log.warning("%s-%d exited with %s; restarting", wp.worker, wp.index, code)
                        self._due.append((now + self.crash_restart_s, wp.worker, wp.index))
                ready = [d for d in self._due if d[0] <= now]
                self._due = [d for d in self._due if d[0] > now]
            for _, worker, index in ready:
                self.pipeline.start_one(worker, index, self.envs.get((worker, index)))
                self.restarts[worker] += 1
            self._stop.wait(0.3)


def _last_line(wp: WorkerProcess) -> str:
    lines = [line for line in wp.log_text().splitlines() if line.strip()]
    return lines[-1][-300:] if lines else ""


# --------------------------------------------------------------------------- the run


@dataclass
class Check:
    """One row of the result table; ``ok`` None = information only."""

    name: str
    value: str
    expected: str = ""
    ok: bool | None = None


@dataclass
class ChaosReport:
    """What one chaos run found."""

    checks: list[Check]
    events: list[str]
    statuses: dict[str, int]
    seconds: float

    @property
    def ok(self) -> bool:
        """True when every asserted check passed."""
        return all(c.ok is not False for c in self.checks)

    def table(self) -> str:
        """The checks as a Markdown table."""
        rows = [("check", "value", "expected", "result")]
        for c in self.checks:
            rows.append((c.name, c.value, c.expected, "" if c.ok is None else ("ok" if c.ok else "FAIL")))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) + " |" for r in rows]
        lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
        return "\n".join(lines)


class ChaosRun:
    """One chaos run on a running stack (see :func:`run_chaos`)."""

    def __init__(self, opts: ChaosOptions, stack: Stack, log_dir: Path) -> None:
        self.opts = opts
        self.stack = stack
        self.log_dir = log_dir
        self.rng = random.Random(opts.seed)
        self.tag = uuid.uuid4().hex[:8]
        self.prefix = f"chaos-{self.tag}."
        self.corpus_table = "chaos_pydocs" if opts.corpus_docs == 0 else f"chaos_pydocs_{opts.corpus_docs}"
        self.trace_table = f"traces_chaos_{self.tag}"
        self.env = {
            **stack.env(),
            "RAG_TOPICS__PREFIX": self.prefix,
            "RAG_RETRIEVER__TABLE": self.corpus_table,
            "RAG_MONITOR__TABLE": self.trace_table,
            "RAG_MONITOR__APP_ID": f"monitor-chaos-{self.tag}",
            "RAG_MONITOR__METRICS_PORT": "0",
            "RAG_MONITOR__WEB_PORT": "0",
            "RAG_GENERATOR__ANSWER_TABLE": f"answers_chaos_{self.tag}",
            "RAG_WORKER__SHUTDOWN_TIMEOUT_S": "10",
            "RAG_KAFKA__SESSION_TIMEOUT_MS": str(opts.session_timeout_ms),
            "RAG_LOG_LEVEL": "INFO",
        }
        self.api_key, digest = new_key()
        if opts.gateways:
            self.env.update(
                {
                    "RAG_GATEWAY__API_KEYS_SHA256": f'["{digest}"]',
                    "RAG_GATEWAY__HOST": "127.0.0.1",
                    "RAG_GATEWAY__RATE_LIMIT_PER_S": "1000",
                }
            )
        self.gateway_envs: dict[tuple[str, int], dict[str, str]] = {}
        self.gateway_urls: list[str] = []
        self.streams: StreamLoad | None = None
        self.gateway_counts: dict[str, float] | None = None  # the gateways' stream counters, read after the load
        self.settings: Settings = load_settings(
            kafka={"bootstrap_servers": stack.bootstrap_servers, "session_timeout_ms": opts.session_timeout_ms},
            database_url=stack.database_url,
            topics={"prefix": self.prefix},
            llm={"url": stack.llm_url},
        )
        self.events: list[str] = []
        self._t0 = time.monotonic()
        self._lock = threading.Lock()
        self.sent: dict[uuid.UUID, float] = {}
        self.delivered: Counter[uuid.UUID] = Counter()
        self.answers: dict[uuid.UUID, Response] = {}
        self.injected: dict[str, tuple[str, bytes]] = {}  # marker → (kind, raw value)
        self.fault_errors: list[str] = []
        self.client_errors: Counter[str] = Counter()  # futures resolved with an exception, by message
        self.fault_counts: Counter[str] = Counter()

    # -- bookkeeping

    def event(self, text: str) -> None:
        """Record (and log) a timeline event."""
        line = f"t={time.monotonic() - self._t0:7.1f}s {text}"
        with self._lock:
            self.events.append(line)
        log.info("%s", line)

    # -- set-up

    def create_topics(self) -> None:
        """Create the four topics of topics.yaml under the run's prefix."""
        spec = load_topics(REPO_ROOT / "topics.yaml").with_prefix(self.prefix)
        apply_topics(admin_client(self.settings.kafka), spec)

    def delete_topics(self) -> None:
        """Delete the run's topics (best effort)."""
        admin = admin_client(self.settings.kafka)
        try:
            names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(self.prefix)]
            if names:
                for fut in admin.delete_topics(names, operation_timeout=30).values():
                    fut.result(timeout=60)
        except Exception as exc:  # noqa: BLE001 - clean-up is best effort
            log.warning("topic clean-up failed: %s", exc)

    # -- faults

    def restart_service(self, name: str) -> None:
        """Stop one stack service and start it again on the same data (blocking until it is ready)."""
        svc = Stack(replace(self.stack.cfg, services=(name,)))
        t0 = time.monotonic()
        svc.down()
        self.event(f"{name} stopped ({time.monotonic() - t0:.1f}s)")
        time.sleep(2.0)
        svc.up()
        self.event(f"{name} ready again ({time.monotonic() - t0:.1f}s after the stop began)")

    def llm_outage(self) -> None:
        """Make the LLM server answer 503 "loading" for ``llm_outage_s`` seconds."""
        s = self.opts.llm_outage_s
        rule = {"kind": "loading", "window_s": s, "estimated_time": s}
        httpx.post(self.stack.llm_url + "/admin/faults", json=[rule], timeout=10).raise_for_status()
        self.event(f"LLM server answers 503 loading for {s:.0f}s")

    def inject_malformed(self, producer: KafkaProducer, burst: int, bursts: int) -> None:
        """Produce this burst's share of malformed messages (every kind) to the requests topic."""
        topic = self.settings.topics.name("requests")
        n = self.opts.malformed_per_kind
        indices = [i for i in range(n) if i % bursts == burst]
        count = 0
        for kind in MALFORMED_KINDS:
            for i in indices:
                marker = f"bad-{kind}-{i}"
                value = malformed_value(kind, marker, self.opts.oversize_bytes, self.rng)
                self.injected[marker] = (kind, value)
                producer.produce(topic, value, marker, [("chaos_marker", marker)])
                count += 1
        self.event(f"injected {count} malformed messages (burst {burst + 1}/{bursts})")

    def schedule(self) -> list[tuple[float, str, Callable[[], None]]]:
        """The fault schedule: (seconds after the load starts, description, action), sorted by time."""
        span = self.opts.load_seconds
        rnd = self.rng.uniform
        out: list[tuple[float, str, Callable[[], None]]] = []
        for worker in ("retriever", "generator", "monitor"):
            for _ in range(self.opts.kills):
                out.append((rnd(0.05, 0.9) * span, f"kill {worker}", functools.partial(self._kill, worker)))
        for _ in range(self.opts.broker_restarts):
            out.append((rnd(0.2, 0.7) * span, "restart broker", functools.partial(self._count, "broker", "kafka")))
        for _ in range(self.opts.postgres_restarts):
            out.append(
                (rnd(0.2, 0.8) * span, "restart postgres", functools.partial(self._count, "postgres", "postgres"))
            )
        if self.opts.llm_outage_s > 0:
            out.append((rnd(0.1, 0.7) * span, "LLM 503 window", self._outage))
        bursts = max(1, min(5, self.opts.malformed_per_kind))
        producer = KafkaProducer(self.settings.kafka, overrides={"message.max.bytes": 8_000_000})
        self._malformed_producer = producer
        for b in range(bursts):
            out.append(
                (
                    rnd(0.05, 0.95) * span,
                    "malformed burst",
                    functools.partial(self.inject_malformed, producer, b, bursts),
                )
            )
        return sorted(out, key=lambda e: e[0])

    def _kill(self, worker: str) -> None:
        self.event(self.supervisor.kill(worker, self.rng))
        self.fault_counts[f"kill {worker}"] += 1

    def _count(self, what: str, service: str) -> None:
        self.restart_service(service)
        self.fault_counts[f"restart {what}"] += 1

    def _outage(self) -> None:
        self.llm_outage()
        self.fault_counts["llm 503 window"] += 1

    def run_faults(self, plan: list[tuple[float, str, Callable[[], None]]], start: float) -> None:
        """Execute the schedule in order (an event that is due late runs at once)."""
        for at, what, action in plan:
            delay = start + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - recorded; the run fails with it
                self.fault_errors.append(f"{what}: {exc}")
                self.event(f"FAULT FAILED {what}: {exc}")
        left = self._malformed_producer.flush(60)
        if left:
            self.fault_errors.append(f"{left} malformed messages not delivered")

    # -- load

    def _on_answer(self, rid: uuid.UUID, fut: Any) -> None:
        with self._lock:
            self.delivered[rid] += 1
            exc = fut.exception() if not fut.cancelled() else None
            if not fut.cancelled() and exc is None:
                self.answers[rid] = fut.result()
            elif exc is not None:
                text = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<id>", f"{type(exc).__name__}: {exc}")
                self.client_errors[text[:200]] += 1

    def run_load(self, client: RagClient, start: float) -> None:
        """Submit ``requests`` requests at ``rate`` per second."""
        queries = load_queries()
        gen = GenerationParams(max_new_tokens=self.opts.max_new_tokens)
        for i in range(self.opts.requests):
            delay = start + i / self.opts.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            req = Request(query=queries[i % len(queries)], top_k=3, generation=gen)
            with self._lock:
                self.sent[req.request_id] = time.monotonic()
            fut = client.submit(req)
            fut.add_done_callback(functools.partial(self._on_answer, req.request_id))
        client.flush(60)
        self.event(f"load done: {self.opts.requests} requests submitted")

    # -- gateways and streams

    def start_gateways(self) -> None:
        """Start ``gateways`` replicas (replica i: reply partition i, a free port of its own, kept on restarts)."""
        for i in range(self.opts.gateways):
            port = resolve_port("auto", setting="RAG_GATEWAY__PORT")
            env = {**os.environ, **self.env, "RAG_GATEWAY__PORT": str(port), "RAG_GATEWAY__REPLY_PARTITION": str(i)}
            self.gateway_envs[("gateway", i)] = env
            self.gateway_urls.append(f"http://127.0.0.1:{port}")
            self.pipeline.start_one("gateway", i, env)

    def stream_thread(self, start: float) -> threading.Thread:
        """The thread of the streaming clients (:class:`bench.chaos_streams.StreamLoad`; idle without gateways)."""
        if self.opts.gateways and self.opts.streams:
            self.streams = StreamLoad(
                self.gateway_urls, self.api_key, load_queries(), self.opts.streams, self.opts.load_seconds,
                self.opts.stream_tokens,
            )  # fmt: skip
            return threading.Thread(target=self.streams.run, args=(start,), name="chaos-streams")
        return threading.Thread(target=lambda: None, name="chaos-streams")

    # -- main

    def execute(self) -> ChaosReport:
        """Run the whole scenario and return the report (the pipeline is stopped at the end)."""
        t_start = time.monotonic()
        self.create_topics()
        line = ingest_corpus(self.stack, self.corpus_table, self.opts.corpus_docs)
        self.event(f"corpus {self.corpus_table}: {line}")
        httpx.delete(self.stack.llm_url + "/admin/faults", timeout=10).raise_for_status()
        httpx.delete(self.stack.llm_url + "/admin/stats", timeout=10).raise_for_status()
        self.pipeline = Pipeline(env=self.env, log_dir=self.log_dir, replicas=dict(self.opts.replicas))
        self.pipeline.start()
        try:
            self.start_gateways()
            self.pipeline.wait_ready(timeout_s=300)
            ready = [f"{w}×{n}" for w, n in self.opts.replicas.items()] + [f"gateway×{self.opts.gateways}"]
            self.event("workers ready: " + ", ".join(ready))
            self.supervisor = Supervisor(self.pipeline, envs=self.gateway_envs)
            self.supervisor.start()
            with RagClient(self.settings) as client:
                plan = self.schedule()
                start = time.monotonic() + 1.0
                faults = threading.Thread(target=self.run_faults, args=(plan, start), name="chaos-faults")
                load = threading.Thread(target=self.run_load, args=(client, start), name="chaos-load")
                streams = self.stream_thread(start)
                faults.start()
                load.start()
                streams.start()
                load.join()
                faults.join()
                streams.join()
                if self.streams is not None:
                    self.event(f"streams done: {len(self.streams.outcomes)}")
                    self.gateway_counts = gateway_counters(self.gateway_urls)
                self.event("fault schedule done")
                self._wait_answers()
                client_duplicates = client.duplicates
            self._wait_dead_letters(timeout_s=60)
            monitor_rows = self._monitor_rows(timeout_s=60)
            llm_stats = self._llm_stats()
        finally:
            sup = getattr(self, "supervisor", None)
            if sup is not None:
                sup.stop()
            codes = self.pipeline.stop(timeout_s=40)
            self.event("workers stopped: " + ", ".join(f"{k}={v}" for k, v in sorted(codes.items())))
        return self.evaluate(client_duplicates, monitor_rows, llm_stats, codes, time.monotonic() - t_start)

    def _wait_answers(self) -> None:
        deadline = time.monotonic() + self.opts.answer_timeout_s
        last = 0.0
        while time.monotonic() < deadline:
            with self._lock:
                done = len(self.delivered)
            if done >= len(self.sent):
                break
            if time.monotonic() - last > 10:
                self.event(f"waiting: {done}/{len(self.sent)} answered")
                last = time.monotonic()
            time.sleep(0.5)
        self.event(f"answers: {len(self.delivered)}/{len(self.sent)}")

    def _dead_letters(self) -> list[DeadLetterRecord]:
        return [r for r in read_dead_letters(self.settings) if isinstance(r, DeadLetterRecord)]

    def _wait_dead_letters(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        missing: list[str] = list(self.injected)
        while time.monotonic() < deadline:
            keys = {_b64(r.letter.key) for r in self._dead_letters()}
            missing = [m for m in self.injected if m.encode() not in keys]
            if not missing:
                return
            time.sleep(3)
        self.event(f"dead letters: {len(missing)} malformed messages still missing after {timeout_s:.0f}s")

    def _monitor_rows(self, timeout_s: float) -> int:
        import psycopg
        from psycopg import sql

        ids = list(self.sent)
        rows = -1
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.stack.database_url, connect_timeout=5) as conn:
                    q = sql.SQL(
                        "SELECT count(*) FROM {} WHERE request_id = ANY(%s) AND response_status IS NOT NULL"
                    ).format(sql.Identifier(self.trace_table))
                    row = conn.execute(q, (ids,)).fetchone()
                    rows = int(row[0]) if row else 0
            except psycopg.Error:
                rows = -1
            if rows >= len(self.answers):
                break
            time.sleep(1)
        return rows

    def _llm_stats(self) -> dict[str, Any]:
        try:
            out: dict[str, Any] = httpx.get(self.stack.llm_url + "/admin/stats", timeout=10).json()
            return out
        except httpx.HTTPError:
            return {}

    # -- evaluation

    def evaluate(
        self,
        client_duplicates: int,
        monitor_rows: int,
        llm_stats: dict[str, Any],
        exit_codes: dict[str, int | None],
        seconds: float,
    ) -> ChaosReport:
        """Read the responses and dead-letter topics and check every request id."""
        bootstrap = self.stack.bootstrap_servers
        by_id: dict[uuid.UUID, list[tuple[int, Response]]] = defaultdict(list)
        bad_responses = 0
        for trec in read_topic(bootstrap, self.settings.topics.name("responses")):
            try:
                resp = decode(trec.value, Response)
            except Exception:  # noqa: BLE001 - counted
                bad_responses += 1
                continue
            by_id[resp.request_id].append((trec.offset, resp))
        sent = set(self.sent)
        lost = [rid for rid in sent if rid not in by_id]
        multi_topic = sum(1 for rid in sent if len(by_id.get(rid, ())) > 1)
        delivered_twice = sum(1 for n in self.delivered.values() if n > 1)
        unanswered_client = len(sent - set(self.delivered))
        regenerated, races, after_unavailable = 0, 0, 0
        examples: list[str] = []
        statuses: Counter[str] = Counter()
        outcomes = self.streams.outcomes if self.streams is not None else []
        streamed = {o.request_id for o in outcomes if o.request_id is not None}
        for rid in sent | streamed:
            resps = [r for _, r in sorted(by_id.get(rid, []), key=lambda x: x[0])]
            if not resps:
                continue
            statuses[resps[0].status] += 1
            seen_created: set[datetime] = set()
            finals: list[Response] = []
            unavailable_before = False
            for r in resps:
                new = r.created_at not in seen_created
                seen_created.add(r.created_at)
                if new and _llm_called(r):
                    if finals:
                        started = r.created_at.timestamp() - _generation_s(r)
                        if started > min(f.created_at.timestamp() for f in finals) + RACE_SLACK_S:
                            regenerated += 1
                            if len(examples) < 5:
                                examples.append(f"{rid}: {[(x.status, x.created_at.isoformat()) for x in resps]}")
                        else:
                            races += 1
                    elif unavailable_before:
                        after_unavailable += 1
                if r.status in FINAL_STATUSES:
                    finals.append(r)
                elif r.status == "model_unavailable":
                    unavailable_before = True
        # malformed messages in the dead-letter topic
        letters = self._dead_letters()
        requests_topic = self.settings.topics.name("requests")
        found: dict[str, list[DeadLetterRecord]] = defaultdict(list)
        for rec in letters:
            key = _b64(rec.letter.key)
            if rec.letter.source_topic == requests_topic and key is not None:
                found[key.decode(errors="replace")].append(rec)
        per_kind_ok: Counter[str] = Counter()
        per_kind_sent: Counter[str] = Counter()
        reasons: dict[str, Counter[str]] = defaultdict(Counter)
        for marker, (kind, raw) in self.injected.items():
            per_kind_sent[kind] += 1
            recs = found.get(marker, [])
            good = [r for r in recs if r.letter.error_class and r.letter.error_message and _same_value(r.letter, raw)]
            if good:
                per_kind_ok[kind] += 1
                reasons[kind][good[0].letter.error_class] += 1

        checks: list[Check] = [
            Check("requests sent", str(len(sent)), str(self.opts.requests), len(sent) == self.opts.requests),
            Check("lost (no Response on the responses topic)", str(len(lost)), "0", not lost),
            Check("answered more than once to the client", str(delivered_twice), "0", delivered_twice == 0),
            Check("not answered to the client (timeout)", str(unanswered_client), "0", unanswered_client == 0),
            Check(
                "failed to the client (an exception, e.g. not delivered)",
                str(sum(self.client_errors.values())),
                "0",
                not self.client_errors,
            ),
            Check("LLM calls for requests already answered", str(regenerated), "0", regenerated == 0),
            Check("request ids with >1 Response on the topic", str(multi_topic), "allowed"),
            Check("duplicates seen and dropped by the client", str(client_duplicates), "allowed"),
            Check("concurrent duplicate generations (before any answer)", str(races), "info"),
            Check("generated again after model_unavailable", str(after_unavailable), "info"),
            Check("undecodable messages on the responses topic", str(bad_responses), "0", bad_responses == 0),
        ]
        for status in ("ok", "model_unavailable", "error", "expired", "rejected", "no_context"):
            checks.append(Check(f"status {status}", str(statuses.get(status, 0)), "info"))
        total_bad = len(self.injected)
        want_bad = len(MALFORMED_KINDS) * self.opts.malformed_per_kind
        checks.append(Check("malformed injected", str(total_bad), f">= {want_bad}", total_bad >= want_bad))
        for kind in MALFORMED_KINDS:
            n_ok, n_sent = per_kind_ok.get(kind, 0), per_kind_sent.get(kind, 0)
            why = ",".join(sorted(reasons[kind])) or "-"
            checks.append(
                Check(f"  {kind} in dead letters with reason ({why})", f"{n_ok}/{n_sent}", f"{n_sent}", n_ok == n_sent)
            )
        named = [rid for rid in (_body_request_id(raw) for _kind, raw in self.injected.values()) if rid is not None]
        rejected = sum(1 for rid in named if any(r.status == "rejected" for _, r in by_id.get(rid, [])))
        checks.append(
            Check(
                "  of them with a request id in the body, answered rejected",
                f"{rejected}/{len(named)}",
                str(len(named)),
                rejected == len(named),
            )
        )
        checks.append(
            Check("monitor trace rows with a response", str(monitor_rows), str(len(self.answers)), None),
        )
        for what in ("retriever", "generator", "monitor"):
            n = self.fault_counts.get(f"kill {what}", 0)
            checks.append(Check(f"SIGKILL {what}", str(n), str(self.opts.kills), n == self.opts.kills))
        for what, want in (("broker", self.opts.broker_restarts), ("postgres", self.opts.postgres_restarts)):
            n = self.fault_counts.get(f"restart {what}", 0)
            checks.append(Check(f"{what} restarts", str(n), str(want), n == want))
        if self.opts.llm_outage_s > 0:
            # The window is a fault applied, and checked as such; how many 503s it served depends on what reached
            # the LLM meanwhile (none when it overlaps the broker restart), so that count is information.
            faults = llm_stats.get("faults", {}) or {}
            applied = self.fault_counts.get("llm 503 window", 0)
            checks.append(
                Check(f"LLM 503 window {self.opts.llm_outage_s:.0f}s applied", str(applied), "1", applied == 1)
            )
            checks.append(Check("  503s the LLM served in it", str(faults.get("loading", 0)), "info"))
        stream_events: list[str] = []
        if self.streams is not None:
            ordered = {rid: [r for _, r in sorted(v, key=lambda x: x[0])] for rid, v in by_id.items()}
            rows, stream_events = stream_checks(
                outcomes, ordered, self.opts.streams, self.opts.gateways, self.gateway_counts
            )
            checks += [Check(name, value, expected, ok) for name, value, expected, ok in rows]
        checks.append(Check("fault actions failed", str(len(self.fault_errors)), "0", not self.fault_errors))
        checks.append(Check("LLM server requests seen", str(llm_stats.get("requests_seen", "?")), "info"))
        sup = self.supervisor
        checks.append(
            Check("worker exits not caused by a kill (restarted)", str(len(sup.unexpected_exits)), "info"),
        )
        unclean = {k: v for k, v in exit_codes.items() if v != 0}
        checks.append(Check("workers not exiting 0 on the final SIGTERM", str(len(unclean)), "0", not unclean))
        latencies = sorted(
            r.timings_ms.get("end_to_end_ms", 0.0) / 1000.0 for r in self.answers.values() if r.status == "ok"
        )
        if latencies:
            p50 = latencies[len(latencies) // 2]
            p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
            checks.append(Check("end-to-end latency of ok answers p50 / p99", f"{p50:.2f}s / {p99:.2f}s", "info"))
        events = list(self.events)
        events += [f"unexpected exit: {u}" for u in sup.unexpected_exits]
        events += [f"regenerated: {e}" for e in examples]
        events += [f"lost: {rid}" for rid in lost[:10]]
        events += [f"fault error: {e}" for e in self.fault_errors]
        events += stream_events
        events += [f"client error ×{n}: {e}" for e, n in self.client_errors.most_common(5)]
        if unclean:
            events.append(f"exit codes: {unclean}")
        return ChaosReport(checks=checks, events=events, statuses=dict(statuses), seconds=seconds)


def _body_request_id(raw: bytes) -> uuid.UUID | None:
    """The request id a malformed value's JSON names (``None``: not JSON, or no valid UUID there)."""
    try:
        body = json.loads(raw)
        return uuid.UUID(body["request_id"]) if isinstance(body, dict) and "request_id" in body else None
    except (ValueError, TypeError, UnicodeDecodeError):
        return None


def _b64(value: str | None) -> bytes | None:
    return None if value is None else base64.b64decode(value)


def _llm_called(r: Response) -> bool:
    """True when producing this Response needed an LLM call (not the retriever's error/expired answers)."""
    if r.status in ("ok", "model_unavailable"):
        return True
    return r.status == "error" and r.error is not None and r.error.stage == "generator"


def _generation_s(r: Response) -> float:
    """Seconds the generator spent on this Response (its start = created_at minus this)."""
    ms = r.timings_ms.get("generator_ms") or r.timings_ms.get("llm_total_ms")
    return float(ms) / 1000.0 if ms else 0.0


def run_chaos(opts: ChaosOptions, log_dir: Path | None = None) -> ChaosReport:
    """Start the chaos stack, run the scenario, stop everything (unless ``keep_stack``); return the report.

    Raises:
        devstack.stack.StackError: a service could not start.
        RuntimeError: the workers did not become ready, or the corpus could not be ingested.
    """
    stack = Stack(stack_config(opts))
    t0 = time.monotonic()
    stack.up()
    log.info("chaos stack up in %.1f s: %s", time.monotonic() - t0, stack.env())
    run: ChaosRun | None = None
    try:
        logs = log_dir or opts.home / "logs" / f"run-{datetime.now(UTC):%Y%m%dT%H%M%S}"
        run = ChaosRun(opts, stack, logs)
        report = run.execute()
        report.events.append(f"worker logs: {logs}")
        return report
    finally:
        if run is not None:
            run.delete_topics()
        if not opts.keep_stack:
            stack.down()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=None, help="requests to send (default 2000; quick 200)")
    p.add_argument("--rate", type=float, default=None, help="requests per second (default 10; quick 5)")
    p.add_argument("--kills", type=int, default=None, help="SIGKILLs per worker type (default 3; quick 1)")
    p.add_argument("--malformed-per-kind", type=int, default=10, help="malformed messages per kind (default 10)")
    p.add_argument("--seed", type=int, default=None, help="random seed of the schedule (default: random)")
    p.add_argument("--streams", type=int, default=None, help="chat completions streamed (default 200; quick 40)")
    p.add_argument("--gateways", type=int, default=None, help="gateway replicas (default 2; 0: no gateway)")
    p.add_argument(
        "--quick", action="store_true", help="short run: 200 requests at 5/s and 40 streams, one kill per worker type"
    )
    p.add_argument("--keep-stack", action="store_true", help="leave the chaos stack running afterwards")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chaos scenario, print the table; 0 when every check passed, 1 otherwise."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for noisy in ("httpx", "devstack.kafka.admin"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("librdkafka").setLevel(logging.CRITICAL)  # connection refused while the broker restarts
    opts = quick_options() if args.quick else ChaosOptions()
    changes: dict[str, Any] = {"keep_stack": args.keep_stack, "malformed_per_kind": args.malformed_per_kind}
    for name in ("requests", "rate", "kills", "seed", "streams", "gateways"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    opts = replace(opts, **changes)
    report = run_chaos(opts)
    print("\n".join(report.events))
    print()
    streams = f" and {opts.streams} streams through {opts.gateways} gateways" if opts.gateways and opts.streams else ""
    print(f"chaos run: {opts.requests} requests at {opts.rate:g}/s{streams}, {report.seconds:.0f} s in all")
    print(report.table())
    print("PASS" if report.ok else "FAIL")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "ChaosOptions",
    "ChaosReport",
    "ChaosRun",
    "Check",
    "Supervisor",
    "malformed_value",
    "quick_options",
    "read_topic",
    "run_chaos",
    "stack_config",
]
