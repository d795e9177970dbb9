"""The CLI as a new user meets it: help for every command, one-line errors for wrong addresses."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "workers.cli"]


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "args", [[], ["topics"], ["topics", "apply"], ["topics", "list"], ["schema"], ["ingest"], ["run"], ["ask"]]
)
def test_help_says_what_each_command_does(args: list[str]) -> None:
    out = _run([*args, "--help"])
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout
    assert len(out.stdout.strip().splitlines()) > 3


def test_wrong_broker_gives_one_line_error() -> None:
    out = _run(["topics", "list"], RAG_KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:1")
    assert out.returncode == 2
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert "127.0.0.1:1" in lines[0] and "Traceback" not in out.stderr


def test_wrong_database_url_gives_one_line_error() -> None:
    out = _run(["ingest", "--python-docs"], RAG_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    assert out.returncode == 2
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr and "127.0.0.1:1" in lines[0]


def test_schema_writes_the_json_schemas_of_every_wire_model(tmp_path: object) -> None:
    out = _run(["schema", "--out", str(tmp_path)])
    assert out.returncode == 0, out.stderr
    import pathlib

    names = sorted(p.name for p in pathlib.Path(str(tmp_path)).iterdir())
    assert names == [
        "cancel_event.schema.json",
        "dead_letter.schema.json",
        "prompt.schema.json",
        "request.schema.json",
        "response.schema.json",
        "token_event.schema.json",
    ]


def test_ask_with_a_question_over_the_limit_is_a_one_line_request_error() -> None:
    """Issue 14 #7: request validation says what it is (not ``error (settings)``), before any connection."""
    out = _run(["ask", "q" * 30_000], RAG_KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:1")
    assert out.returncode == 2
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    assert lines == [
        "error (invalid_request): invalid request: query: String should have at most 20000 characters "
        "(limit 20000, got 30000)"
    ], out.stderr
    out = _run(["ask", "q", "--top-k", "0"], RAG_KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:1")
    assert out.returncode == 2 and out.stderr.startswith("error (invalid_request): invalid request: top_k:")


def test_a_bad_setting_is_still_reported_as_settings() -> None:
    out = _run(["ask", "q"], RAG_WORKER__BATCH_MAX="many")
    assert out.returncode == 2 and out.stderr.startswith("error (settings): worker.batch_max:"), out.stderr
