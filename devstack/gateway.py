"""A pipeline behind gateway replicas, for the end-to-end tests, benchmark B8 and the demo.

:class:`GatewayPipeline` applies topics.yaml under a topic prefix of its own, ingests a few small documents
(:data:`DOCS`) into a table of its own (unless given one), starts a retriever, a generator and N gateway replicas
(replica i on reply partition i, each on a free port) as ``ragstream run`` processes, and waits until a question
goes through. Everything it starts is stopped by :meth:`GatewayPipeline.stop`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from devstack.pipeline import Pipeline, WorkerProcess
from devstack.stack import REPO_ROOT
from workers.gateway.limits import new_key
from workers.ports import resolve_port

#: Small documents the pipeline answers from (file name → text).
DOCS = {
    "tuples.md": "# Tuples\n\nA tuple is an immutable sequence of values, written with commas, often in "
    "parentheses: (1, 2). Tuples can be used as dictionary keys when their items are hashable. A tuple with one "
    "item needs a trailing comma.",
    "len.md": "# The len function\n\nlen(s) returns the number of items of a container such as a list, tuple, "
    "string or dictionary. Its return value is an int; objects define __len__ to support it.",
    "with.md": "# The with statement\n\nThe with statement calls __enter__ on the context manager, runs the body "
    "and then always calls __exit__, also when the body raises an exception.",
    "generators.md": "# Generators\n\nA generator function contains yield. Calling it returns a generator "
    "iterator; each next() runs the body up to the next yield and returns the yielded value.",
}


@dataclass
class GatewayPipeline:
    """Retriever, generator and gateway replicas on topics of their own (see the module docstring).

    Args:
        env: the stack's ``RAG_*`` variables (``Stack.env()``), with ``RAG_LLM__URL`` of the LLM to use.
        log_dir: folder of the process logs and the documents.
        gateways: gateway replicas (replica i reads reply partition i).
        table: the chunk table to answer from (default: a new one with :data:`DOCS` ingested).
        extra_env: more settings for every process (e.g. ``RAG_GATEWAY__RATE_LIMIT_PER_S``).
    """

    env: Mapping[str, str]
    log_dir: Path
    gateways: int = 2
    table: str = ""
    extra_env: Mapping[str, str] = field(default_factory=dict)
    name: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    key: str = ""
    urls: list[str] = field(default_factory=list)
    procs: Pipeline | None = None

    @property
    def prefix(self) -> str:
        """The topic prefix of this pipeline."""
        return f"gw{self.name}."

    def settings_env(self) -> dict[str, str]:
        """The ``RAG_*`` environment every process of this pipeline gets."""
        return {
            **self.env,
            "RAG_TOPICS__PREFIX": self.prefix,
            "RAG_RETRIEVER__TABLE": self.table or f"gw_{self.name}",
            "RAG_GENERATOR__ANSWER_TABLE": f"gw_answers_{self.name}",
            "RAG_WORKER__SHUTDOWN_TIMEOUT_S": "10",
            "RAG_KAFKA__SESSION_TIMEOUT_MS": "6000",
            **self.extra_env,
        }

    def start(self, timeout_s: float = 300.0) -> None:
        """Topics, documents, processes; returns once a question is answered through the first gateway.

        Raises:
            RuntimeError: a step failed or a process died (its log named).
        """
        self.key, digest = new_key()
        env = {**self.settings_env(), "RAG_GATEWAY__API_KEYS_SHA256": f'["{digest}"]'}
        self._env = env
        run_env = {**os.environ, **env}
        cli = [sys.executable, "-m", "workers.cli"]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(
            [*cli, "topics", "apply", "--file", str(REPO_ROOT / "topics.yaml")],
            env=run_env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"topics apply failed: {out.stderr[-2000:]}")
        if not self.table:
            docs = self.log_dir / "docs"
            docs.mkdir(exist_ok=True)
            for name, text in DOCS.items():
                (docs / name).write_text(text, encoding="utf-8")
            out = subprocess.run(
                [*cli, "ingest", str(docs)], env={**run_env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
                timeout=600,
            )  # fmt: skip
            if out.returncode != 0:
                raise RuntimeError(f"ingest failed: {out.stdout[-1000:]} {out.stderr[-2000:]}")
        self.procs = Pipeline(env=env, log_dir=self.log_dir, replicas={"retriever": 1, "generator": 1})
        self.procs.start()
        for i in range(self.gateways):
            self.start_gateway(i)
        self.procs.wait_ready(timeout_s=timeout_s)
        self.wait_answering(timeout_s)

    def start_gateway(self, index: int, **settings: str) -> WorkerProcess:
        """Start gateway replica ``index`` on reply partition ``index`` and a free port (``urls[index]``)."""
        assert self.procs is not None
        port = resolve_port("auto", setting="RAG_GATEWAY__PORT")
        url = f"http://127.0.0.1:{port}"
        if index < len(self.urls):
            self.urls[index] = url
        else:
            self.urls.append(url)
        env = {
            **os.environ,
            **self._env,
            "RAG_GATEWAY__PORT": str(port),
            "RAG_GATEWAY__REPLY_PARTITION": str(index),
            "RAG_GATEWAY__HOST": "127.0.0.1",
            **settings,
        }
        return self.procs.start_one("gateway", index, env)

    def restart_generator(self) -> WorkerProcess:
        """Start a new generator process (after the old one was killed) and wait until it consumes."""
        assert self.procs is not None
        gen = self.procs.start_one("generator", len([p for p in self.procs.procs if p.worker == "generator"]))
        return gen

    def headers(self) -> dict[str, str]:
        """The ``Authorization`` header of this pipeline's API key."""
        return {"Authorization": f"Bearer {self.key}"}

    def wait_answering(self, timeout_s: float) -> None:
        """Wait until every gateway answers a question (the retriever has loaded its model).

        Raises:
            RuntimeError: no answer within ``timeout_s`` seconds, or a process died.
        """
        assert self.procs is not None
        deadline = time.monotonic() + timeout_s
        body: dict[str, Any] = {"messages": [{"role": "user", "content": "What is a tuple?"}], "max_tokens": 4}
        for url in self.urls:
            while True:
                self.procs.check_alive()
                try:
                    r = httpx.post(url + "/v1/chat/completions", json=body, headers=self.headers(), timeout=30)
                    if r.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gateway {url} did not answer within {timeout_s:.0f} s (logs {self.log_dir})")
                time.sleep(0.5)

    def stop(self) -> dict[str, int | None]:
        """Stop every process this pipeline started (SIGTERM, then SIGKILL after 20 s).

        Returns:
            ``<worker>-<index>`` → exit code (0 after a clean stop); empty when nothing was started.
        """
        if self.procs is None:
            return {}
        return self.procs.stop(timeout_s=20)

    def delete_topics(self) -> None:
        """Delete this pipeline's topics (every topic with its prefix)."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.env["RAG_KAFKA__BOOTSTRAP_SERVERS"]})
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(self.prefix)]
        for fut in admin.delete_topics(names, operation_timeout=30).values() if names else []:
            try:
                fut.result(timeout=60)
            except Exception:  # noqa: BLE001 - clean-up is best effort
                pass
