"""Measurement plumbing shared by the benchmarks: alternating runs, CPU accounting, the result table.

Every benchmark compares two sides measured in the same process run: each side is run once as a warm-up
(discarded), then the sides alternate (A, B, A, B, ...) ``runs`` times, so a slow drift of the machine hits
both. A side's figure is the median of its runs; the ratio is median(A) / median(B). CPU time is summed
over the processes a side uses (user + system seconds from psutil, children included) and divided by the
requests it completed.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import psutil


@dataclass(frozen=True)
class Run:
    """One measured run of one side.

    Attributes:
        value: the figure compared (unit in :class:`Side`), e.g. requests/s.
        requests: requests (or queries, rows) the run completed.
        cpu_s: CPU seconds (user + system) the side's processes spent during the run.
        extra: other figures of the run (e.g. ``{"tokens_per_s": ...}``), reported as medians in notes.
    """

    value: float
    requests: int
    cpu_s: float
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Side:
    """The runs of one side of a comparison."""

    label: str
    unit: str
    runs: list[Run] = field(default_factory=list)

    @property
    def median(self) -> float:
        """Median of the runs' values (NaN without runs)."""
        return statistics.median(r.value for r in self.runs) if self.runs else float("nan")

    @property
    def cpu_per_request(self) -> float:
        """Median over runs of CPU seconds per completed request (NaN when unknown)."""
        vals = [r.cpu_s / r.requests for r in self.runs if r.requests > 0 and r.cpu_s == r.cpu_s]
        return statistics.median(vals) if vals else float("nan")

    def extra_median(self, key: str) -> float:
        """Median of one extra figure over the runs (NaN when absent)."""
        vals = [r.extra[key] for r in self.runs if key in r.extra]
        return statistics.median(vals) if vals else float("nan")


@dataclass
class Row:
    """One line of the result table.

    Attributes:
        bench: benchmark id and case, e.g. ``"B1 c=4"``.
        metric: what the ratio compares, e.g. ``"req/s pipeline / direct"``.
        a: the measured side (numerator).
        b: the reference side (denominator).
        target: the target, as text (e.g. ``">= 0.97"``).
        ok: whether the target is met (None: no target for this line).
        note: other figures (recall, p99, tokens/s).
        ratio: ``a.median / b.median`` unless given.
        min_ratio: a "ratio at least" target: when given, ``target`` defaults to ``">= <min_ratio>"`` and
            ``ok`` is ``ratio >= min_ratio`` (a NaN ratio is not met).
    """

    bench: str
    metric: str
    a: Side
    b: Side
    target: str = ""
    ok: bool | None = None
    note: str = ""
    ratio: float | None = None
    min_ratio: float | None = None

    def __post_init__(self) -> None:
        if self.ratio is None:
            self.ratio = self.a.median / self.b.median if self.b.median else float("nan")
        if self.min_ratio is not None:
            self.target = self.target or f">= {self.min_ratio}"
            self.ok = (self.ratio or 0.0) >= self.min_ratio


def alternate(
    run_a: Callable[[], Run], run_b: Callable[[], Run], runs: int, warmup: bool = True
) -> tuple[list[Run], list[Run]]:
    """Run each side once as a warm-up (discarded), then A and B alternately ``runs`` times each."""
    if warmup:
        run_a()
        run_b()
    a: list[Run] = []
    b: list[Run] = []
    for i in range(runs):
        # Alternate the order too (ABBA...), so neither side always runs right after the other.
        first, second = (run_a, run_b) if i % 2 == 0 else (run_b, run_a)
        r1, r2 = first(), second()
        (a if first is run_a else b).append(r1)
        (b if first is run_a else a).append(r2)
    return a, b


class CpuMeter:
    """CPU seconds (user + system) of a set of processes and their live children.

    Args:
        pids: process ids.
        include_self: count the current process too (the bench process, when it is the client of the side).
    """

    def __init__(self, pids: Iterable[int] = (), include_self: bool = True) -> None:
        self.pids = {*pids, *([psutil.Process().pid] if include_self else [])}

    def total(self) -> float:
        """CPU seconds so far of the processes and their current children (exited ones are gone)."""
        seen: set[int] = set()
        total = 0.0
        for pid in self.pids:
            try:
                proc = psutil.Process(pid)
                procs = [proc, *proc.children(recursive=True)]
            except psutil.Error:
                continue
            for p in procs:
                if p.pid in seen:
                    continue
                seen.add(p.pid)
                try:
                    t = p.cpu_times()
                except psutil.Error:
                    continue
                total += t.user + t.system
        return total


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank (NaN for no values)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100.0 * (len(s) - 1))))
    return s[k]


def _fmt(x: float) -> str:
    if x != x:  # NaN
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 0.01:
        return f"{x:.3f}"
    return f"{x:.2e}"


def format_table(rows: Sequence[Row]) -> str:
    """The result table as GitHub-flavoured Markdown (also readable in a terminal)."""
    head = [
        "bench",
        "metric",
        "side A",
        "median A",
        "side B",
        "median B",
        "ratio",
        "target",
        "met",
        "CPU-s/req A",
        "CPU-s/req B",
        "notes",
    ]
    lines = [head]
    for r in rows:
        met = "-" if r.ok is None else ("yes" if r.ok else "NO")
        lines.append(
            [
                r.bench,
                r.metric,
                r.a.label,
                f"{_fmt(r.a.median)} {r.a.unit}",
                r.b.label,
                f"{_fmt(r.b.median)} {r.b.unit}",
                _fmt(r.ratio if r.ratio is not None else float("nan")),
                r.target,
                met,
                _fmt(r.a.cpu_per_request),
                _fmt(r.b.cpu_per_request),
                r.note,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for n, line in enumerate(lines):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)
