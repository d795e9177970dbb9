"""What the benchmarks run against: a devstack of their own, topics per case, a corpus, worker processes.

The stack lives in ``.devstack/bench`` on ports 29092 (Kafka), 25432 (PostgreSQL) and 28080 (the simulated
LLM server), apart from the default and the test stacks (``RAG_BENCH_KAFKA_PORT``, ``RAG_BENCH_PG_PORT``,
``RAG_BENCH_LLM_PORT`` move them, e.g. when another checkout's bench stack holds them). Each case gets a unique
topic prefix and consumer groups, so cases never read each other's messages.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from confluent_kafka.admin import AdminClient, NewTopic

from devstack.pipeline import Pipeline
from devstack.stack import REPO_ROOT, Stack, StackConfig
from workers.settings import Settings, load_settings

log = logging.getLogger(__name__)

BENCH_HOME = REPO_ROOT / ".devstack" / "bench"
#: Corpus table of the pipeline benchmarks: Python's reference docs as chunks, random unit embeddings.
CORPUS_TABLE = "bench_corpus"
QUESTIONS = REPO_ROOT.parent / "shared" / "data" / "questions_public.jsonl"
#: Partitions of each benchmark topic (as topics.yaml: 12; dead letters 3).
PARTITIONS = {"requests": 12, "prompts": 12, "responses": 12, "dead_letter": 3}


def bench_stack_config(services: tuple[str, ...] = ("kafka", "postgres", "llm")) -> StackConfig:
    """The benchmarks' own stack: simulated LLM engine, ports 29092/25432/28080, home ``.devstack/bench``."""
    return StackConfig(
        home=BENCH_HOME,
        services=services,
        kafka_port=int(os.environ.get("RAG_BENCH_KAFKA_PORT", "29092")),
        pg_port=int(os.environ.get("RAG_BENCH_PG_PORT", "25432")),
        llm_port=int(os.environ.get("RAG_BENCH_LLM_PORT", "28080")),
        llm_engine="simulated",
        llm_model="tiny",  # the simulated engine has no model; its prompt budgets use the tiny tokenizer
        llm_extra_args=("--max-concurrent-requests", "256", "--log-level", "WARNING"),
    )


@dataclass
class BenchEnv:
    """The running stack plus helpers; use as a context manager (:func:`bench_env`)."""

    stack: Stack
    log_dir: Path
    topics_made: list[str] = field(default_factory=list)

    # -- processes ---------------------------------------------------------------------------------

    def service_pids(self, *names: str) -> list[int]:
        """Process ids of stack services (``kafka``, ``postgres``, ``llm``) that are running."""
        status = self.stack.status()
        return [int(status[n]["pid"]) for n in names if status.get(n, {}).get("pid")]

    # -- LLM server --------------------------------------------------------------------------------

    def llm_config(self, **changes: Any) -> dict[str, Any]:
        """Change the simulated engine / server limits (``POST /admin/config``) and clear its faults."""
        httpx.delete(self.stack.llm_url + "/admin/faults", timeout=10).raise_for_status()
        resp = httpx.post(self.stack.llm_url + "/admin/config", json=changes, timeout=10)
        resp.raise_for_status()
        out: dict[str, Any] = resp.json()
        return out

    def llm_stats(self, reset: bool = False) -> dict[str, Any]:
        """The simulated engine's counters (``GET /admin/stats``; ``reset``: ``DELETE`` first)."""
        if reset:
            httpx.delete(self.stack.llm_url + "/admin/stats", timeout=10).raise_for_status()
        resp = httpx.get(self.stack.llm_url + "/admin/stats", timeout=10)
        resp.raise_for_status()
        out: dict[str, Any] = resp.json()
        return out

    # -- settings and topics -----------------------------------------------------------------------

    def env_for(self, prefix: str, **extra: str) -> dict[str, str]:
        """``RAG_*`` variables of workers on topics with ``prefix`` (groups default to prefix + role)."""
        env = {
            **self.stack.env(),
            "RAG_TOPICS__PREFIX": prefix,
            "RAG_RETRIEVER__TABLE": CORPUS_TABLE,
            "RAG_MONITOR__TABLE": "traces_" + prefix.strip(".").replace("-", "_"),
            "RAG_MONITOR__APP_ID": f"monitor-{prefix.strip('.')}",
            "RAG_MONITOR__METRICS_PORT": "0",
            "RAG_MONITOR__WEB_PORT": "0",
            "RAG_WORKER__SHUTDOWN_TIMEOUT_S": "10",
            "RAG_LOG_LEVEL": "INFO",  # the ready markers devstack.pipeline waits for are INFO lines
        }
        env.update(extra)
        return env

    def settings_for(self, prefix: str, **overrides: Any) -> Settings:
        """Settings of an in-process client or service on topics with ``prefix``."""
        base: dict[str, Any] = {
            "kafka": {"bootstrap_servers": self.stack.bootstrap_servers},
            "database_url": self.stack.database_url,
            "topics": {"prefix": prefix},
            "llm": {"url": self.stack.llm_url},
            "retriever": {"table": CORPUS_TABLE, "llm_tokenizer": self.stack.llm_tokenizer_path},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        return load_settings(**base)

    def make_topics(self, prefix: str | None = None) -> str:
        """Create the four topics under a new unique prefix (or the given one); returns the prefix."""
        prefix = prefix or f"bench-{uuid.uuid4().hex[:8]}."
        s = self.settings_for(prefix)
        admin = AdminClient({"bootstrap.servers": self.stack.bootstrap_servers})
        names = {s.topics.name(k): n for k, n in PARTITIONS.items()}  # type: ignore[arg-type]  # literal keys
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=n, replication_factor=1) for t, n in names.items()], operation_timeout=30
        )
        for fut in futures.values():
            fut.result(timeout=60)
        self.topics_made.extend(names)
        for _ in range(100):  # until every partition has a leader in the metadata
            md = admin.list_topics(timeout=10).topics
            if all(t in md and md[t].error is None and len(md[t].partitions) == n for t, n in names.items()):
                break
            time.sleep(0.1)
        return prefix

    def delete_topics(self) -> None:
        """Delete every topic this environment created."""
        if not self.topics_made:
            return
        admin = AdminClient({"bootstrap.servers": self.stack.bootstrap_servers})
        for fut in admin.delete_topics(self.topics_made, operation_timeout=30).values():
            try:
                fut.result(timeout=60)
            except Exception as exc:  # noqa: BLE001 - cleanup is best effort
                log.debug("topic delete failed: %s", exc)
        self.topics_made.clear()

    # -- workers -----------------------------------------------------------------------------------

    @contextmanager
    def workers(self, prefix: str, replicas: dict[str, int], **extra_env: str) -> Iterator[Pipeline]:
        """Worker processes on topics with ``prefix``, ready on entry, stopped on exit."""
        tag = prefix.strip(".") + "-" + "-".join(sorted(replicas))
        pipe = Pipeline(env=self.env_for(prefix, **extra_env), log_dir=self.log_dir / tag, replicas=replicas)
        pipe.start()
        try:
            pipe.wait_ready(timeout_s=300)
            yield pipe
        finally:
            pipe.stop(timeout_s=30)

    # -- corpus ------------------------------------------------------------------------------------

    def ensure_corpus(self, chunks: int = 2000) -> int:
        """Fill :data:`CORPUS_TABLE` once: pydoc topics cut into ~800-character chunks, random unit vectors.

        The retrieval quality does not matter to the benchmarks, only the work: an HNSW search over a few
        thousand rows and passages of realistic length in the prompt. Returns the row count.
        """
        from pydoc_data.topics import topics

        from workers.adapters.interfaces import ChunkRow
        from workers.adapters.pgvector import VectorStore
        from workers.adapters.postgres import open_pool

        pool = open_pool(self.stack.database_url, min_size=1, max_size=2, vector=True)
        try:
            store = VectorStore(pool, table=CORPUS_TABLE, dimension=384)
            store.ensure_schema()
            have = store.count()
            if have >= chunks:
                return have
            rng = np.random.default_rng(7)
            rows: list[ChunkRow] = []
            for doc, text in sorted(topics.items()):
                for i in range(0, len(text), 800):
                    piece = text[i : i + 800]
                    vec = rng.standard_normal(384).astype(np.float32)
                    rows.append(
                        ChunkRow(
                            chunk_id=f"{doc}#{i // 800}",
                            document_id=doc,
                            chunk_index=i // 800,
                            text=piece,
                            content_hash=hashlib.sha256(piece.encode()).hexdigest(),
                            token_count=len(piece) // 4,
                            embedding=vec / np.linalg.norm(vec),
                        )
                    )
                    if len(rows) >= chunks:
                        break
                if len(rows) >= chunks:
                    break
            store.upsert(rows)
            return store.count()
        finally:
            pool.close()


def questions() -> list[str]:
    """The public questions (20), the queries of the pipeline benchmarks."""
    import json

    if QUESTIONS.is_file():
        return [json.loads(line)["q"] for line in QUESTIONS.read_text().splitlines() if line.strip()]
    return [f"What does the {w} statement do?" for w in ("pass", "with", "try", "raise", "import", "del")]


@contextmanager
def bench_env(services: tuple[str, ...], keep_stack: bool = False) -> Iterator[BenchEnv]:
    """Start the benchmark stack's ``services`` (idempotent), yield the environment, then delete the topics
    made and stop the services (unless ``keep_stack``)."""
    stack = Stack(bench_stack_config(services))
    t0 = time.monotonic()
    stack.up()
    log.info("bench stack up in %.1f s", time.monotonic() - t0)
    env = BenchEnv(stack=stack, log_dir=BENCH_HOME / "logs" / "workers")
    try:
        yield env
    finally:
        env.delete_topics()
        if not keep_stack:
            stack.down()
