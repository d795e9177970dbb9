"""Start the three workers (retriever, generator, monitor) as separate ``ragstream run`` processes.

Used by the demo and the end-to-end tests. Each process gets the environment that points it at a stack,
writes its log to ``<log_dir>/<worker>-<n>.log`` and is stopped with SIGTERM (then SIGKILL after a bound).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

WORKERS = ("retriever", "generator", "monitor")
#: A line each worker logs once it is consuming (the loop's partition assignment, the monitor's start).
READY_MARKERS = {
    "retriever": "assigned role=retriever",
    "generator": "assigned role=generator",
    "monitor": "monitor started",
}


@dataclass
class WorkerProcess:
    """One running worker process and its log file."""

    worker: str
    index: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log_text(self) -> str:
        """The log written so far (empty when none)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


@dataclass
class Pipeline:
    """The worker processes of one pipeline.

    Args:
        env: environment variables added to ``os.environ`` for every worker (``RAG_*``).
        log_dir: folder for the worker logs.
        replicas: processes per worker name.
    """

    env: dict[str, str]
    log_dir: Path
    replicas: dict[str, int] = field(default_factory=lambda: {w: 1 for w in WORKERS})
    procs: list[WorkerProcess] = field(default_factory=list)

    def start(self) -> None:
        """Start every worker process (returns at once; see :meth:`wait_ready`)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        for worker, n in self.replicas.items():
            for i in range(n):
                self.start_one(worker, i, env)

    def start_one(self, worker: str, index: int, env: dict[str, str] | None = None) -> WorkerProcess:
        """Start one worker process and register it."""
        path = self.log_dir / f"{worker}-{index}.log"
        env = dict(env or {**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
        if worker == "retriever":
            env["HF_HUB_OFFLINE"] = "1"  # the embedding model loads from its local folder, never from a hub
        else:
            # huggingface_hub refuses every HTTP call under HF_HUB_OFFLINE, the LLM server's included
            env.pop("HF_HUB_OFFLINE", None)
        with path.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "workers.cli", "run", worker],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        wp = WorkerProcess(worker, index, proc, path)
        self.procs.append(wp)
        log.info("started %s-%d pid=%d log=%s", worker, index, proc.pid, path)
        return wp

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Wait until every worker logged its ready marker.

        Raises:
            RuntimeError: a worker exited, or was not ready within ``timeout_s``; names its log file.
        """
        deadline = time.monotonic() + timeout_s
        waiting = list(self.procs)
        while waiting:
            for wp in list(waiting):
                if wp.proc.poll() is not None:
                    tail = "\n".join(wp.log_text().splitlines()[-15:])
                    raise RuntimeError(
                        f"{wp.worker}-{wp.index} exited with {wp.proc.returncode}; log {wp.log_path}:\n{tail}"
                    )
                if READY_MARKERS[wp.worker] in wp.log_text():
                    waiting.remove(wp)
            if waiting and time.monotonic() > deadline:
                names = ", ".join(f"{w.worker}-{w.index} ({w.log_path})" for w in waiting)
                raise RuntimeError(f"workers not ready after {timeout_s:.0f} s: {names}")
            time.sleep(0.2)

    def stop(self, timeout_s: float = 40.0) -> dict[str, int | None]:
        """SIGTERM every worker, SIGKILL what is still alive after ``timeout_s``; returns exit codes."""
        for wp in self.procs:
            if wp.proc.poll() is None:
                wp.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        codes: dict[str, int | None] = {}
        for wp in self.procs:
            try:
                wp.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s-%d did not stop within %.0f s; killing", wp.worker, wp.index, timeout_s)
                wp.proc.kill()
                wp.proc.wait(5)
            codes[f"{wp.worker}-{wp.index}"] = wp.proc.returncode
        self.procs.clear()
        return codes
