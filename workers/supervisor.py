"""Worker processes: start ``python -m workers.cli run <worker>`` subprocesses, wait until they consume, stop them.

One supervisor for every caller that runs whole pipelines as separate processes: the demo, the end-to-end
tests and benchmarks (``devstack.pipeline``), the chaos harness, and ``ragstream shadow``. Each process gets
the caller's environment, writes stdout and stderr to its own log file, runs in its own session (a Ctrl-C in
the terminal does not reach it) and is stopped with SIGTERM, then SIGKILL after a bound.

The retriever gets ``HF_HUB_OFFLINE=1`` (its embedding model loads from a local folder, never from a hub);
the generator and the monitor must not have it: huggingface_hub then refuses every HTTP call, the LLM
server's included.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The last line of a Python traceback: ``package.module.SomeError: message``.
_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*:")

WORKERS = ("retriever", "generator", "monitor")
#: A line each worker logs once it is consuming (the loop's partition assignment, the monitor's start).
READY_MARKERS = {
    "retriever": "assigned role=retriever",
    "generator": "assigned role=generator",
    "monitor": "monitor started",
    "monolith": "assigned role=monolith ",
    "gateway": "gateway on http://",
}


def process_env(env: Mapping[str, str], worker: str) -> dict[str, str]:
    """The environment of one worker process: ``env`` plus ``PYTHONUNBUFFERED=1``, with ``HF_HUB_OFFLINE``
    set for the retriever and removed for the others (see the module docstring)."""
    out = {**env, "PYTHONUNBUFFERED": "1"}
    if worker == "retriever":
        out["HF_HUB_OFFLINE"] = "1"
    else:
        out.pop("HF_HUB_OFFLINE", None)
    return out


@dataclass
class WorkerProcess:
    """One running worker process and its log file."""

    worker: str
    index: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def name(self) -> str:
        """``<worker>-<index>``."""
        return f"{self.worker}-{self.index}"

    def log_text(self) -> str:
        """The log written so far (empty when none)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines of the log."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def failure(self) -> str:
        """Why the process exited, from its log: the last error line (the CLI's ``error (...)`` line, else the
        last ``...Error: ...`` line of a traceback), else the end of the log."""
        lines = [ln.strip() for ln in self.log_text().splitlines() if ln.strip()]
        for ln in reversed(lines):
            if ln.startswith("error ("):
                return ln
        for ln in reversed(lines):
            if _ERROR_LINE.match(ln):
                return ln
        return "the end of its log:\n" + self.log_tail()

    def exit_message(self, when: str = "") -> str:
        """``<name> exited with <code><when>: <cause> (log <path>)``."""
        return f"{self.name} exited with {self.proc.returncode}{when}: {self.failure()} (log {self.log_path})"


@dataclass
class WorkerProcesses:
    """The worker processes of one pipeline.

    Args:
        env: environment variables added to ``os.environ`` for every worker (``RAG_*``).
        log_dir: folder for the worker logs.
        replicas: processes per worker name (default: one of each of :data:`WORKERS`).
        inherit: start from ``os.environ`` (True) or from ``env`` alone (False: ``env`` is the whole
            environment, as ``ragstream shadow`` builds it).
        log_name: file name of a worker's log, formatted with ``worker`` and ``index``.
        error: exception class raised by :meth:`check_alive` and :meth:`wait_ready`.
    """

    env: Mapping[str, str]
    log_dir: Path
    replicas: dict[str, int] = field(default_factory=lambda: {w: 1 for w in WORKERS})
    inherit: bool = True
    log_name: str = "{worker}-{index}.log"
    error: type[Exception] = RuntimeError
    procs: list[WorkerProcess] = field(default_factory=list)

    def _base_env(self) -> dict[str, str]:
        return {**os.environ, **self.env} if self.inherit else dict(self.env)

    def start(self) -> None:
        """Start every worker process (returns at once; see :meth:`wait_ready`)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for worker, n in self.replicas.items():
            for i in range(n):
                self.start_one(worker, i)

    def start_one(self, worker: str, index: int, env: Mapping[str, str] | None = None) -> WorkerProcess:
        """Start one worker process and register it.

        Args:
            worker: ``retriever``, ``generator`` or ``monitor``.
            index: replica number (names the log file).
            env: the whole environment to start from (default: this object's).
        """
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_dir / self.log_name.format(worker=worker, index=index)
        with path.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "workers.cli", "run", worker],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=process_env(env if env is not None else self._base_env(), worker),
                start_new_session=True,
            )
        wp = WorkerProcess(worker, index, proc, path)
        self.procs.append(wp)
        log.info("started %s pid=%d log=%s", wp.name, proc.pid, path)
        return wp

    def check_alive(self) -> None:
        """Raise when a worker has exited.

        Raises:
            ``error``: names the worker, its exit code, its log file and the end of its log.
        """
        for wp in self.procs:
            if wp.proc.poll() is not None:
                raise self.error(wp.exit_message())

    def wait_ready(self, timeout_s: float = 120.0, stop: Any = None) -> None:
        """Wait until every worker logged its ready marker.

        Args:
            timeout_s: seconds allowed (model loading included).
            stop: an object with ``is_set()`` to give up early (Ctrl-C / SIGTERM).

        Raises:
            ``error``: a worker not ready yet exited, or was not ready within ``timeout_s``; names its log file.
        """
        deadline = time.monotonic() + timeout_s
        waiting = list(self.procs)
        while waiting and not (stop is not None and stop.is_set()):
            for wp in list(waiting):
                if wp.proc.poll() is not None:
                    raise self.error(wp.exit_message(" before it was ready"))
                if READY_MARKERS[wp.worker] in wp.log_text():
                    waiting.remove(wp)
            if waiting and time.monotonic() > deadline:
                names = ", ".join(f"{w.name} ({w.log_path})" for w in waiting)
                raise self.error(f"workers not ready after {timeout_s:.0f} s: {names}")
            if waiting:
                time.sleep(0.2)

    def stop(self, timeout_s: float = 40.0) -> dict[str, int | None]:
        """SIGTERM every worker, SIGKILL what is still alive after ``timeout_s``.

        Returns:
            ``<worker>-<index>`` → exit code.
        """
        for wp in self.procs:
            if wp.proc.poll() is None:
                wp.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        codes: dict[str, int | None] = {}
        for wp in self.procs:
            try:
                wp.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing", wp.name, timeout_s)
                wp.proc.kill()
                wp.proc.wait(5)
            codes[wp.name] = wp.proc.returncode
        self.procs.clear()
        return codes
