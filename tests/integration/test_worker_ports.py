"""Ports a worker listens on (issue 14 #8, #10): a port in use is a one-line error before anything slow starts;
several monitors run on one host (``auto`` metrics port, faust's web server off by default).

The workers run as ``ragstream run ...`` processes against the real stack, as a user starts them.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "workers.cli"]


@contextmanager
def _listening() -> Iterator[int]:
    """A port some other process (here: this one) already listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _env(stack: Any, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_") and k != "DATABASE_URL"}
    env.update(stack.env())
    env.update({"PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", **extra})
    return env


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error (")]


@pytest.mark.parametrize(
    ("worker", "extra"),
    [
        ("retriever", {}),
        ("generator", {"RAG_LLM__ENGINE": "simulated", "RAG_GENERATOR__ANSWER_STORE": "false"}),
        ("monolith", {"RAG_LLM__ENGINE": "simulated"}),
    ],
)
def test_a_metrics_port_in_use_ends_a_worker_with_one_line_before_the_model_loads(
    stack: Any, worker: str, extra: dict[str, str]
) -> None:
    with _listening() as port:
        t0 = time.monotonic()
        out = subprocess.run(
            [*CLI, "run", worker],
            env=_env(stack, RAG_WORKER__METRICS_PORT=str(port), **extra),
            capture_output=True,
            text=True,
            timeout=300,
        )
        elapsed = time.monotonic() - t0
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "model loaded" not in out.stderr and "LLM model_id" not in out.stderr
    assert _error_lines(out.stderr) == [
        f"error (config): port {port} (RAG_WORKER__METRICS_PORT) is already in use: another process listens there "
        "(a second replica on this host?); set RAG_WORKER__METRICS_PORT to a free port, to auto (one the system "
        "picks) or to 0 (none)"
    ], out.stderr[-3000:]
    assert elapsed < 60, elapsed  # before the broker check, the database and the model


class MonitorProc:
    """A ``ragstream run monitor`` process with its log file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([*CLI, "run", "monitor"], env=env, stdout=self._file, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def metrics_port(self) -> int | None:
        m = re.search(r"metrics on http://0\.0\.0\.0:(\d+)/metrics", self.text())
        return int(m.group(1)) if m else None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._file.close()
        return int(self.proc.returncode)


def _wait(cond: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _monitor_env(stack: Any, unique: str, **extra: str) -> dict[str, str]:
    return _env(
        stack,
        RAG_TOPICS__PREFIX=f"mp{unique}.",
        RAG_MONITOR__APP_ID=f"monitor-{unique}",
        RAG_MONITOR__TABLE=f"traces_{unique}",
        RAG_KAFKA__SESSION_TIMEOUT_MS="6000",
        **extra,
    )


def test_two_monitors_run_on_one_host_with_auto_metrics_ports(
    stack: Any, unique: str, make_topics: Callable[..., list[str]], tmp_path: Path
) -> None:
    """Issue 14 #10: no fixed port clashes (faust's web server is off unless asked for; metrics ``auto``)."""
    import urllib.request

    prefix = f"mp{unique}."
    make_topics([prefix + t for t in ("rag.requests", "rag.prompts", "rag.responses", "rag.dead-letter")], 3)
    env = _monitor_env(stack, unique, RAG_MONITOR__METRICS_PORT="auto")
    monitors = [MonitorProc(env, tmp_path / f"monitor-{i}.log") for i in range(2)]
    try:
        ports = [_wait(m.metrics_port, 60, f"monitor {i}'s metrics port") for i, m in enumerate(monitors)]
        assert ports[0] != ports[1]
        _wait(lambda: all("partitions assigned" in m.text() for m in monitors), 90, "both monitors to join")
        for m, port in zip(monitors, ports, strict=True):
            assert m.proc.poll() is None, m.text()[-3000:]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                assert b"ragstream_monitor" in resp.read()
    finally:
        codes = [m.stop() for m in monitors]
    assert codes == [0, 0], [m.text()[-2000:] for m in monitors]


@pytest.mark.parametrize("setting", ["RAG_MONITOR__METRICS_PORT", "RAG_MONITOR__WEB_PORT"])
def test_a_monitor_port_in_use_is_a_one_line_error(stack: Any, unique: str, setting: str) -> None:
    with _listening() as port:
        env = _monitor_env(stack, unique, **{"RAG_MONITOR__METRICS_PORT": "auto", setting: str(port)})
        out = subprocess.run([*CLI, "run", "monitor"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    lines = _error_lines(out.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error (config): port {port} ({setting}) is already in use")
