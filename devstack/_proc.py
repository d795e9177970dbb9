"""Small process helpers for devstack: pid files, detached starts, bounded stops, port probes, HTTP servers run for
the length of a ``with`` block."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PidInfo:
    """What a pid file records about a process devstack started.

    Attributes:
        pid: Process id.
        create_time: Process creation time (seconds since the epoch, as psutil reports it); guards
            against a recycled pid being mistaken for our process.
    """

    pid: int
    create_time: float


def read_pid(path: Path) -> PidInfo | None:
    """Read a pid file written by :func:`write_pid`.

    Args:
        path: The pid file.

    Returns:
        The recorded process, or ``None`` when the file is missing or unreadable.
    """
    try:
        raw = json.loads(path.read_text())
        return PidInfo(pid=int(raw["pid"]), create_time=float(raw["create_time"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_pid(path: Path, pid: int) -> PidInfo:
    """Record a running process in a pid file (atomically).

    Args:
        path: The pid file; its folder is created.
        pid: Process id of a running process.

    Returns:
        What was written.

    Raises:
        psutil.NoSuchProcess: the process is already gone.
    """
    info = PidInfo(pid=pid, create_time=psutil.Process(pid).create_time())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": info.pid, "create_time": info.create_time}))
    tmp.replace(path)
    return info


def alive(info: PidInfo | None) -> bool:
    """Tell whether the process in a pid record still runs (and is not a zombie or a recycled pid)."""
    if info is None:
        return False
    try:
        proc = psutil.Process(info.pid)
        if abs(proc.create_time() - info.create_time) > 1.0:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def spawn(
    argv: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> int:
    """Start a detached process (own session) with stdout and stderr appended to a log file.

    Args:
        argv: Program and arguments.
        log_path: Log file, appended to; its folder is created.
        env: Full environment of the child; ``None`` inherits ours.
        cwd: Working folder of the child.
        user: Run as this system user (needs root).

    Returns:
        The child's pid.

    Raises:
        OSError: the program cannot be started.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(  # noqa: S603 - argv is built by devstack, not from user input
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
            user=user,
        )
    # The child outlives us on purpose; forget the Popen object without a ResourceWarning.
    proc.returncode = 0
    logger.debug("spawned pid=%s argv=%s log=%s", proc.pid, argv[0], log_path)
    return proc.pid


def stop(info: PidInfo | None, *, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> bool:
    """Stop a process: send ``sig``, wait up to ``timeout_s``, then SIGKILL its process group.

    Args:
        info: The process (from its pid file); ``None`` or a dead process is a no-op.
        sig: First signal (SIGTERM; PostgreSQL's "fast shutdown" is SIGINT).
        timeout_s: Seconds to wait after the first signal before SIGKILL.

    Returns:
        True when a running process was stopped, False when there was nothing to stop.
    """
    if not alive(info):
        return False
    assert info is not None
    try:
        proc = psutil.Process(info.pid)
        proc.send_signal(sig)
    except psutil.Error:
        return False
    try:
        proc.wait(timeout_s)
        return True
    except psutil.TimeoutExpired:
        logger.warning("pid=%s did not stop within %.0f s after signal %s; killing it", info.pid, timeout_s, sig)
    except psutil.Error:
        return True
    try:
        os.killpg(info.pid, signal.SIGKILL)
    except OSError:
        try:
            proc.kill()
        except psutil.Error:
            pass
    try:
        proc.wait(10)
    except psutil.Error:
        pass
    return True


def port_open(port: int, host: str = "127.0.0.1", timeout_s: float = 0.5) -> bool:
    """Tell whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 20) -> str:
    """Return the last ``lines`` lines of a text file ("" when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16_384))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def free_port(host: str = "127.0.0.1", *, pair: bool = False) -> int:
    """A TCP port free on ``host`` now (the OS picks it; another process may take it before it is bound again).

    Args:
        host: the address to bind.
        pair: the next port must be free too (the broker's KRaft controller listens on ``port + 1``).

    Raises:
        RuntimeError: no free pair found in 50 tries.
    """
    for _ in range(50):
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if not pair:
            return port
        with socket.socket() as s2:
            try:
                s2.bind((host, port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port pair")


@contextmanager
def serving_http(
    proc: subprocess.Popen[bytes],
    url: str,
    health_path: str,
    *,
    what: str,
    start_timeout_s: float,
    probe_timeout_s: float = 2.0,
    poll_s: float = 0.1,
) -> Iterator[None]:
    """Wait until the server ``proc`` started answers ``GET url + health_path`` with 200, run the block, then stop it
    (SIGTERM, SIGKILL after 10 s) however the block ends.

    Args:
        proc: the server process, already started.
        url: its base URL (``http://127.0.0.1:PORT``).
        health_path: the path that answers 200 once it serves (``/health``, ``/v1/models``).
        what: the server, as the error names it.
        start_timeout_s: seconds allowed until it answers 200 (a model loads first).
        probe_timeout_s: timeout of one probe (s).
        poll_s: pause between probes (s).

    Raises:
        RuntimeError: the process exited, or did not answer 200 within ``start_timeout_s``.
    """
    import httpx

    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                if httpx.get(url + health_path, timeout=probe_timeout_s).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start (exit status {proc.poll()})")
            time.sleep(poll_s)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
