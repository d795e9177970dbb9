"""Smoke test of the benchmark command: B4 in quick mode on a small table prints the table with ratios.

No timing is asserted: only that the command runs and prints its table.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_b4_quick_prints_the_table() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench", "B4", "--quick", "--vectors", "3000", "--runs", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    header = next(line for line in out.stdout.splitlines() if line.startswith("| bench"))
    assert "ratio" in header and "CPU-s/req A" in header
    rows = [line for line in out.stdout.splitlines() if line.startswith("| B4 ef=")]
    assert len(rows) == 4, out.stdout
