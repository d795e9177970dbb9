"""Shared pytest fixtures: the devstack services (started lazily, once per session), unique names, topics.

Environment:
    RAG_TEST_STACK=external: start nothing; use ``RAG_KAFKA__BOOTSTRAP_SERVERS``, ``RAG_DATABASE_URL`` and
        ``RAG_LLM__URL`` (defaults: the ``python -m devstack up`` ports).
    RAG_TEST_KEEP_STACK=1: leave the test stack running after the session (the next session reuses it).
    RAG_TEST_HOME, RAG_TEST_KAFKA_PORT, RAG_TEST_PG_PORT, RAG_TEST_LLM_PORT: where the test stack lives
        (defaults ``<repo>/.devstack/test``, 19092, 15432, 18080).

Several pytest sessions may share one test stack at the same time: each holds a lease file in
``<home>/leases/`` and the last one to finish stops the stack.
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from devstack.stack import REPO_ROOT, Stack, StackConfig

TEST_HOME = Path(os.environ.get("RAG_TEST_HOME", str(REPO_ROOT / ".devstack" / "test")))


@dataclass(frozen=True)
class ExternalStack:
    """Addresses of services somebody else runs (``RAG_TEST_STACK=external``); nothing to start or stop."""

    bootstrap_servers: str
    database_url: str
    llm_url: str

    def up(self) -> None:
        """Nothing to start."""

    def down(self) -> None:
        """Nothing to stop."""

    def status(self) -> dict[str, dict[str, Any]]:
        """Nothing is known about external services."""
        return {}

    def env(self) -> dict[str, str]:
        """Environment variables that point ragstream at these services."""
        return {
            "RAG_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "RAG_DATABASE_URL": self.database_url,
            "RAG_LLM__URL": self.llm_url,
        }


def external_stack_requested() -> bool:
    """True when the tests run against services started elsewhere (``RAG_TEST_STACK=external``)."""
    return os.environ.get("RAG_TEST_STACK", "").lower() == "external"


def stack_config_for_tests() -> StackConfig:
    """The configuration of the tests' own stack (ports and home from ``RAG_TEST_*``)."""
    return StackConfig(
        home=TEST_HOME,
        kafka_port=int(os.environ.get("RAG_TEST_KAFKA_PORT", "19092")),
        pg_port=int(os.environ.get("RAG_TEST_PG_PORT", "15432")),
        llm_port=int(os.environ.get("RAG_TEST_LLM_PORT", "18080")),
        # The tiny random model, for speed: SmolLM2 (the devstack default) answers at ~18 tokens/s here, and the
        # suite asks hundreds of questions. tests/e2e/test_smollm2.py runs the pipeline on SmolLM2.
        llm_model="tiny",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark everything under tests/integration and tests/e2e with the matching marker."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        if "e2e" in parts:
            item.add_marker(pytest.mark.e2e)


class _Lease:
    """A file lock plus a per-process lease file, so concurrent sessions share one test stack."""

    def __init__(self, home: Path) -> None:
        self.dir = home / "leases"
        self.lock_path = home / ".lease-lock"
        self.mine = self.dir / str(os.getpid())

    def _locked(self) -> Any:
        self.dir.mkdir(parents=True, exist_ok=True)
        f = open(self.lock_path, "w")  # noqa: SIM115 - closed by the caller's with-block
        fcntl.flock(f, fcntl.LOCK_EX)
        return f

    def acquire(self, stack: Stack) -> None:
        with self._locked():
            self.mine.write_text("")
            stack.up()

    def release(self, stack: Stack, keep: bool) -> None:
        with self._locked():
            self.mine.unlink(missing_ok=True)
            others = [p for p in self.dir.iterdir() if p.name.isdigit() and psutil.pid_exists(int(p.name))]
            for stale in set(self.dir.iterdir()) - set(others):
                stale.unlink(missing_ok=True)
            if not keep and not others:
                stack.down()


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack | ExternalStack]:
    """The running services (Kafka, PostgreSQL + pgvector, LLM server), started on first use.

    Yields:
        A :class:`devstack.Stack` on the test ports (or an :class:`ExternalStack`), with
        ``bootstrap_servers``, ``database_url`` and ``llm_url``.
    """
    if external_stack_requested():
        yield ExternalStack(
            bootstrap_servers=os.environ.get("RAG_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            database_url=os.environ.get(
                "RAG_DATABASE_URL", os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/ragstream")
            ),
            llm_url=os.environ.get("RAG_LLM__URL", "http://127.0.0.1:8080"),
        )
        return
    st = Stack(stack_config_for_tests())
    lease = _Lease(st.cfg.home)
    lease.acquire(st)
    try:
        yield st
    finally:
        lease.release(st, keep=os.environ.get("RAG_TEST_KEEP_STACK", "") not in ("", "0", "false"))


@pytest.fixture
def unique() -> str:
    """A short unique string (10 hex characters) for per-test topic names and consumer groups."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def make_topics(stack: Stack | ExternalStack) -> Iterator[Callable[..., list[str]]]:
    """A factory ``make_topics(names, partitions=3, config=None) -> names`` creating topics for one test.

    The topics are created on the stack's broker (replication factor 1) and deleted when the test ends.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
    created: list[str] = []

    def _make(names: Sequence[str] | str, partitions: int = 3, config: dict[str, str] | None = None) -> list[str]:
        wanted = [names] if isinstance(names, str) else list(names)
        futures = admin.create_topics(
            [NewTopic(n, num_partitions=partitions, replication_factor=1, config=config or {}) for n in wanted],
            operation_timeout=30,
            request_timeout=30,
        )
        for name, fut in futures.items():
            fut.result(timeout=30)
            created.append(name)
        # Wait until the metadata shows every partition with a leader.
        for _ in range(100):
            md = admin.list_topics(timeout=10).topics
            if all(n in md and len(md[n].partitions) == partitions and md[n].error is None for n in wanted):
                break
            time.sleep(0.1)
        return wanted

    yield _make
    if created:
        for fut in admin.delete_topics(created, operation_timeout=30, request_timeout=30).values():
            try:
                fut.result(timeout=30)
            except KafkaException:
                pass


@dataclass
class SimulatedLLM:
    """A TGI-compatible server with the simulated engine (devstack/tgi/simulated_engine.py) for fault tests."""

    url: str
    proc: Any

    def reset(self, **config: Any) -> None:
        """Clear the fault schedule and stats; set engine config (ttft_ms, per_token_ms, capacity, ...)."""
        import httpx

        with httpx.Client(base_url=self.url, timeout=10) as c:
            c.delete("/admin/faults").raise_for_status()
            c.delete("/admin/stats").raise_for_status()
            base = {"ttft_ms": 20, "per_token_ms": 2, "capacity": 16, "max_concurrent_requests": 128}
            c.post("/admin/config", json={**base, **config}).raise_for_status()

    def faults(self, rules: list[dict[str, Any]]) -> None:
        """Replace the fault schedule (see the simulated engine's docstring for the rule format)."""
        import httpx

        httpx.post(self.url + "/admin/faults", json=rules, timeout=10).raise_for_status()

    def stats(self) -> dict[str, Any]:
        """The engine's counters (requests_seen, completed, failed, faults by kind, ...)."""
        import httpx

        return dict(httpx.get(self.url + "/admin/stats", timeout=10).json())


@pytest.fixture(scope="session")
def sim_llm_server() -> Iterator[SimulatedLLM]:
    """One simulated LLM server process per session on a free port (no model, filler tokens)."""
    from devstack.tgi.launch import simulated_server

    with simulated_server(max_input_tokens=3072, max_total_tokens=4096) as (url, proc):
        yield SimulatedLLM(url, proc)


@pytest.fixture
def sim_llm(sim_llm_server: SimulatedLLM) -> SimulatedLLM:
    """The session's simulated LLM server, reset (no faults, fast default timing) for this test."""
    sim_llm_server.reset()
    return sim_llm_server
