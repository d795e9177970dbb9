"""Start the project's TGI-compatible server (any engine) on a free port: for tests, fixtures and benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from devstack._proc import free_port, serving_http

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
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack.tgi", *args, "--port", str(port), "--log-level", "warning"],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        cwd=REPO_ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    with serving_http(
        proc, url, "/health", what=f"LLM server {list(args)}", start_timeout_s=start_timeout_s, probe_timeout_s=1.0
    ):
        yield url, proc
