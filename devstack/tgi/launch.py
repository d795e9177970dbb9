"""Start the project's TGI-compatible server (any engine) on a free port: for tests, fixtures and benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def simulated_server(
    max_input_tokens: int, max_total_tokens: int, start_timeout_s: float = 60.0
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run ``python -m devstack.tgi --engine simulated`` on a free port until the block ends.

    Args:
        max_input_tokens: the server's prompt limit (tokens, reported in ``/info``, enforced with 422).
        max_total_tokens: its prompt + generation limit (tokens).
        start_timeout_s: seconds allowed for ``/health`` to answer 200.

    Yields:
        ``(base URL, process)``.

    Raises:
        RuntimeError: the server exited or did not become healthy in time.
    """
    args = ["--engine", "simulated", "--max-input-tokens", str(max_input_tokens),
            "--max-total-tokens", str(max_total_tokens)]  # fmt: skip
    with tgi_server(args, start_timeout_s) as running:
        yield running


@contextmanager
def tgi_server(args: Sequence[str], start_timeout_s: float = 60.0) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run ``python -m devstack.tgi ARGS`` on a free port until the block ends.

    Args:
        args: the server's options (``--engine``, limits ...), without ``--port`` and ``--log-level``.
        start_timeout_s: seconds allowed for ``/health`` to answer 200 (a real model loads first).

    Yields:
        ``(base URL, process)``.

    Raises:
        RuntimeError: the server exited or did not become healthy in time.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack.tgi", *args, "--port", str(port), "--log-level", "warning"],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        cwd=REPO_ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"LLM server {list(args)} did not start (exit status {proc.poll()})")
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
