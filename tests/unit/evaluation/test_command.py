"""``ragstream evaluate`` on the typed report: the table, the gate lines, the files and the exit status.

The runs are the shared test runs; reading them (Kafka, PostgreSQL) is replaced by building the report directly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from workers.cli import app
from workers.contracts.errors import ConfigError
from workers.evaluation import evaluate as evaluate_module
from workers.evaluation.gates import Gate
from workers.evaluation.models import Report
from workers.evaluation.report import build_report
from workers.evaluation.runs import RunSource
from workers.settings import Settings

from .cases import two_runs


def _invoke(monkeypatch: pytest.MonkeyPatch, out: Path, *gates: str) -> tuple[int, str, list[RunSource]]:
    seen: list[RunSource] = []

    def fake_evaluate(
        settings: Settings, baseline: RunSource, candidate: RunSource, *, gates: list[Gate], **_: Any
    ) -> Report:
        seen.extend([baseline, candidate])
        base, cand = two_runs()
        labels = {f"question {i}": frozenset({"d3"}) for i in range(6)}
        return build_report(base, cand, labels=labels, gates=gates)

    monkeypatch.setattr(evaluate_module, "evaluate", fake_evaluate)
    args = ["evaluate", "--candidate", "run:k3", "--no-similarity", "--out", str(out)]
    for g in gates:
        args += ["--fail-on", g]
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.output, seen


def test_evaluate_command_prints_the_runs_and_exits_1_when_a_gate_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    code, output, seen = _invoke(monkeypatch, tmp_path, "hit@5:-0.05", "error_rate:max=0.5")
    assert code == 1, output
    assert seen[1] == RunSource("topics", "rag.eval.k3.")
    assert "baseline topics:t. vs candidate topics:rag.eval.r1." in output
    assert "│ hit@5 " in output and "-1.000 (-100.0%)" in output  # Δ absolute and in percent
    assert "FAIL hit@5:-0.05: candidate 0 below limit 0.950 (baseline 1, -100.0%)" in output
    assert "pass error_rate:max=0.5: 0 <= 0.500" in output
    assert "its hit@5 is hit@3, capped by k" in output  # the candidate retrieved 3 sources
    assert "e+0" not in output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] is False and [g["passed"] for g in report["gates"]] == [False, True]
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_evaluate_command_exits_0_when_every_gate_holds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, output, _ = _invoke(monkeypatch, tmp_path, "latency.end_to_end_ms.p99:+10%", "rates.expired:max=0.2")
    assert code == 0, output
    assert json.loads((tmp_path / "report.json").read_text())["passed"] is True


def test_a_gate_on_an_unknown_metric_fails_before_anything_is_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def never(*_: Any, **__: Any) -> Report:
        raise AssertionError("the runs must not be read when a gate is bad")

    monkeypatch.setattr(evaluate_module, "evaluate", never)
    for gate in ("hit@10:-0.1", "latency.e2e.p50:+20%", "error_rate=0.01"):
        args = ["evaluate", "--candidate", "run:k3", "--no-similarity", "--out", str(tmp_path), "--fail-on", gate]
        result = CliRunner().invoke(app, args)
        assert isinstance(result.exception, ConfigError), (gate, result.output, result.exception)
    assert "valid names" in str(CliRunner().invoke(app, [*args[:-1], "hit@10:-0.1"]).exception)
    assert not (tmp_path / "report.json").exists()


def test_list_metrics_prints_every_gate_metric() -> None:
    result = CliRunner().invoke(app, ["evaluate", "--list-metrics"])
    assert result.exit_code == 0, result.output
    for name in ("hit@5", "latency.p50", "error_rate", "latency_ms.processing_ms.p50", "compare.chunk_overlap.mean"):
        assert name in result.output
