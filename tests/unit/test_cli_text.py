"""What the command line prints about itself: the version, errors, the worker settings, the stack's exports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from devstack.__main__ import export_lines
from workers.cli import app, error_text
from workers.contracts.errors import ConfigError
from workers.supervisor import WorkerProcess

ROOT = Path(__file__).resolve().parents[2]


def test_version_names_the_checkout_the_code_runs_from() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("ragstream ") and f"({ROOT})" in result.output


def test_error_text_keeps_the_first_line_first_and_lists_on_their_own_lines() -> None:
    assert error_text(ConfigError("bad   gate\n")) == "error (config): bad gate"
    assert error_text(ConfigError("unknown metric; valid names:\na, b\nc")) == (
        "error (config): unknown metric; valid names:\n  a, b\n  c"
    )


def test_run_help_lists_the_settings_of_each_worker() -> None:
    out = CliRunner().invoke(app, ["run", "--help"], terminal_width=200).output
    for line in ("retriever: RAG_DATABASE_URL", "generator: RAG_LLM__URL", "monitor: RAG_DATABASE_URL", "monolith:"):
        assert line in out, out
    assert "RAG_RETRIEVER__TEMPLATE" in out and "RAG_MONITOR__TABLE" in out


def test_exports_are_quoted_for_eval() -> None:
    assert export_lines({"RAG_A": "x y", "RAG_B": "postgresql://u@h:1/db"}) == [
        "export RAG_A='x y'",
        "export RAG_B=postgresql://u@h:1/db",
    ]


def test_a_worker_that_exits_is_reported_with_its_error_line_first(tmp_path: Path) -> None:
    log = tmp_path / "retriever.log"
    log.write_text("INFO loading model\nerror (config): unknown prompt template 'x'; known: ['concise', 'default']\n")
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(2)"])
    proc.wait()
    wp = WorkerProcess("retriever", 0, proc, log)
    msg = wp.exit_message(" before it was ready")
    assert msg.startswith(
        "retriever-0 exited with 2 before it was ready: error (config): unknown prompt template 'x'"
    ), msg
    assert msg.endswith(f"(log {log})")
    log.write_text("Traceback (most recent call last):\n  File x\nValueError: boom\n")
    assert wp.failure() == "ValueError: boom"
