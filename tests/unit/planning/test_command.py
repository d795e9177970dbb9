"""``ragstream plan`` through the CLI: printed figures, sources, --json, and one-line errors with exit status 2.

The expected numbers are the hand-computed ones of test_capacity.py (B9 costs, λ = 50 req/s, ρ_max 0.7):
μ_gpu = min(20, 16/1.2) = 13.33; g = m = ceil(50 / (0.7 × 13.33)) = 6; split 6 × 2.5 + 1 × 0.4 = 15.4 $/h,
monolith 6 × 2.5 = 15 $/h.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from workers.cli import app

B9_COSTS: dict[str, Any] = {
    "source": "B9 quick, 2026-12-06, 2-core polyglot box, simulated engine",
    "retrieval_cpu_s": 0.012,
    "generator_cpu_s": 0.004,
    "monolith_cpu_s": 0.015,
    "engine_s": 0.05,
    "generation_latency_s": 1.2,
    "generation_latency_p99_s": 2.0,
    "retrieval_latency_s": 0.05,
    "hop_latency_s": 0.005,
    "hop_latency_p99_s": 0.02,
    "prompt_tokens": 400,
    "completion_tokens": 60,
}
PRICES = ["--rate", "50", "--cpu-price", "0.4", "--gpu-price", "2.5"]


def write_costs(tmp_path: Path, **changes: Any) -> Path:
    """Write the B9 costs file, with fields changed or (value None) removed."""
    data = {k: v for k, v in (B9_COSTS | changes).items() if v is not None}
    path = tmp_path / "costs.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def invoke(*args: str) -> Result:
    # wide enough that no table cell wraps; the formulas are printed without wrapping anyway
    return CliRunner().invoke(app, ["plan", *args], env={"COLUMNS": "200"})


def assert_one_line_error(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error (plan): ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output


def test_tables_and_arithmetic(tmp_path: Path) -> None:
    result = invoke("--costs", str(write_costs(tmp_path)), *PRICES, "--p99-budget-s", "2.1")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert (
        "GPU machines g = max(ceil(λ / (ρ_max × μ_gpu)), ceil(λ × generator_cpu_s / (ρ_max × gpu_host_cores)), 1) "
        "= max(ceil(50 / (0.7 × 13.33)), ceil(50 × 0.004 / (0.7 × 8)), 1) = max(ceil(5.357), ceil(0.03571), 1) = 6"
    ) in out
    assert "split cost/h = g × gpu_price + CPU machines × cpu_price = 6 × 2.5 + 1 × 0.4 = 15.4 $/h" in out
    assert "monolith cost/h = m × gpu_price = 6 × 2.5 = 15 $/h" in out
    assert "15.4 / (50 × 3600) × 1e6 = 85.56 $" in out
    assert (
        "requests partitions = ceil(headroom × max(retriever replicas, monolith replicas)) = ceil(2 × max(1, 6)) = 12"
        in (out)
    )
    assert "at 50 req/s the monolith is cheaper: 15 $/h vs 15.4 $/h" in out
    assert "split never cheaper up to 1000 req/s" in out
    # split p99 0.05 + 2 + 3 × 0.02 = 2.11 > 2.1: over; monolith 2.09: within
    assert "over budget (estimate at ρ ≤ 0.7)" in out
    assert "B9 quick, 2026-12-06" in out  # the costs' source is printed with the inputs


def test_option_overrides_file_and_break_even_found(tmp_path: Path) -> None:
    # --monolith-cpu-s 0.1: μ_mono = min(13.33, 10) = 10, the process CPU binds; m = ceil(50 / 7) = 8.
    # split is cheaper from the first scanned rate above 21 req/s: at 21 m = 3 ($7.5) vs g = 3 + 1 CPU ($7.9);
    # the next grid point, 21.46, needs m = 4 ($10) and still g = 3 ($7.9), and m − g ≥ 1 from there on.
    result = invoke("--costs", str(write_costs(tmp_path)), *PRICES, "--monolith-cpu-s", "0.1")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "min(13.33, 1 / 0.1) = min(13.33, 10) = 10 req/s; binds: monolith process CPU" in out
    assert "max(1, ceil(50 / (0.7 × 10))) = max(1, ceil(7.143)) = 8" in out
    assert "at 50 req/s the split is cheaper: 15.4 $/h vs 20 $/h" in out
    assert "split cheaper per hour from 21.46 req/s" in out
    assert "not at 21 req/s" in out
    # (2.5 + 0.4) / (0.3571 − 0.2687) = 32.79
    assert "= 32.79 req/s" in out
    assert "asymptotic winner (lower slope): split" in out


def test_json_shape(tmp_path: Path) -> None:
    path = write_costs(tmp_path)
    result = invoke("--costs", str(path), *PRICES, "--partition-headroom", "1.5", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {
        "inputs",
        "engine",
        "split",
        "monolith",
        "partitions",
        "cheaper_at_rate",
        "break_even",
        "notes",
    }
    assert data["split"]["gpu_machines"]["value"] == 6
    assert data["split"]["cpu_machines"]["value"] == 1
    assert data["monolith"]["replicas"]["value"] == 6
    assert data["monolith"]["cost_per_hour"]["value"] == pytest.approx(15.0)
    assert data["split"]["cost_per_million"]["value"] == pytest.approx(85.5556, rel=1e-5)
    # headroom 1.5: requests ceil(1.5 × max(1, 6)) = 9, prompts ceil(1.5 × 6) = 9
    assert data["partitions"]["requests"]["value"] == 9
    assert data["partitions"]["prompts"]["value"] == 9
    assert data["break_even"]["status"] == "never"
    assert data["cheaper_at_rate"] == "monolith"
    sources = data["inputs"]["sources"]
    assert sources["engine_s"] == f"file {path}"
    assert sources["rate"] == "option"
    assert sources["partition_headroom"] == "option"
    assert sources["cpu_cores"] == "default"
    assert data["inputs"]["costs"]["source"].startswith("B9 quick")


def test_costs_from_options_only() -> None:
    # no file: every measured cost as an option; engine_s 0.1 → μ_gpu = min(10, 13.33) = 10,
    # g = ceil(50 / 7) = ceil(7.143) = 8
    costs = [
        *("--retrieval-cpu-s", "0.012", "--generator-cpu-s", "0.004", "--monolith-cpu-s", "0.015"),
        *("--engine-s", "0.1", "--generation-latency-s", "1.2", "--generation-latency-p99-s", "2.0"),
        *("--retrieval-latency-s", "0.05", "--hop-latency-s", "0.005", "--hop-latency-p99-s", "0.02"),
    ]
    result = invoke(*costs, *PRICES, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["engine"]["binding"] == "engine GPU time"
    assert data["split"]["gpu_machines"]["value"] == 8
    assert data["inputs"]["sources"]["engine_s"] == "option"


def test_missing_cost_names_option_and_field(tmp_path: Path) -> None:
    result = invoke("--costs", str(write_costs(tmp_path, engine_s=None)), *PRICES)
    assert_one_line_error(result, "missing --engine-s", "engine_s")
    # given as an option instead, the plan runs
    assert invoke("--costs", str(write_costs(tmp_path, engine_s=None)), *PRICES, "--engine-s", "0.05").exit_code == 0


def test_missing_rate_and_price(tmp_path: Path) -> None:
    result = invoke("--costs", str(write_costs(tmp_path)), "--cpu-price", "0.4")
    assert_one_line_error(result, "--rate", "--gpu-price")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--rate", "0", "--cpu-price", "0.4", "--gpu-price", "2.5"], "--rate: Input should be greater than 0"),
        (["--rate", "50", "--cpu-price", "0.4", "--gpu-price", "-1"], "--gpu-price: Input should be greater than 0"),
        ([*PRICES, "--engine-s", "0"], "--engine-s: Input should be greater than 0"),
        ([*PRICES, "--max-utilization", "1.2"], "--max-utilization"),
        ([*PRICES, "--generation-latency-p99-s", "1.0"], "generation_latency_p99_s (1.0) is below"),
    ],
)
def test_bad_values_exit_2_on_one_line(tmp_path: Path, args: list[str], fragment: str) -> None:
    assert_one_line_error(invoke("--costs", str(write_costs(tmp_path)), *args), fragment)


def test_bad_value_in_file_names_the_field(tmp_path: Path) -> None:
    path = write_costs(tmp_path, retrieval_cpu_s=-0.5)
    assert_one_line_error(invoke("--costs", str(path), *PRICES), f"retrieval_cpu_s in {path}", "greater than 0")


def test_unreadable_costs_file(tmp_path: Path) -> None:
    assert_one_line_error(invoke("--costs", str(tmp_path / "absent.json"), *PRICES), "cannot read --costs")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    assert_one_line_error(invoke("--costs", str(bad), *PRICES), "is not JSON")
