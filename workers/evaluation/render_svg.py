"""The evaluation report's plots as inline SVG (no library, nothing fetched): latency per stage on a log axis,
CDF lines, grouped bars and histograms. Axis ticks fall on round values (:func:`workers.evaluation.numbers.nice_ticks`);
numbers are printed for people (:func:`workers.evaluation.numbers.human`). Baseline is drawn in blue,
candidate in orange.
"""

from __future__ import annotations

import html
import math
from collections.abc import Collection, Mapping, Sequence

from workers.evaluation.analysis import ordered_stages
from workers.evaluation.models import Summary
from workers.evaluation.numbers import human, nice_ticks

BASE_COLOR = "#4c78a8"
CAND_COLOR = "#f58518"
NEUTRAL_COLOR = "#54a24b"


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _tick(v: float, step: float) -> str:
    """A tick label: as many decimals as the step needs (0.25 → 2, 5,000 → 0)."""
    digits = 0 if step >= 1 else min(6, max(0, -math.floor(math.log10(step) + 1e-9)))
    if step < 1 and round(step * 10**digits, 6) % 1:
        digits += 1
    return human(v, digits)


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{_e(title)}" font-family="DejaVu Sans, Arial, sans-serif" font-size="11">'
        f'<title>{_e(title)}</title><rect width="100%" height="100%" fill="#fff"/>' + "".join(body) + "</svg>"
    )


def _legend(x: float, y: float, items: Sequence[tuple[str, str]]) -> list[str]:
    out = []
    for i, (label, color) in enumerate(items):
        xi = x + i * 120
        out.append(f'<rect x="{xi:.1f}" y="{y - 9:.1f}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{xi + 16:.1f}" y="{y + 1:.1f}">{_e(label)}</text>')
    return out


def _stat(latency: Mapping[str, Summary], stage: str, key: str) -> float | None:
    """One statistic (``p50``, ``mean``, ...) of one stage's latency summary, ``None`` when unknown."""
    summary = latency.get(stage)
    return None if summary is None else summary.get(key)


def svg_latency(
    baseline: Mapping[str, Summary],
    candidate: Mapping[str, Summary],
    width: int = 920,
    apart: Collection[str] = (),
) -> str:
    """Horizontal bars per stage and run on a log axis (ms): bar to p50, light bar to p90, tick at p99.

    Stages in ``apart`` (not comparable between the runs: they include queue time of replayed traffic) are
    labelled in grey with a ``*``.
    """
    stages = ordered_stages(set(baseline) | set(candidate))
    if not stages:
        return "<p>No latencies (no answer with status ok).</p>"
    vals = [
        v
        for sec in (baseline, candidate)
        for s in stages
        for k in ("p50", "p90", "p99")
        if (v := _stat(sec, s, k)) is not None
    ]
    pos = [v for v in vals if v > 0]
    lo = 10 ** math.floor(math.log10(min(pos))) if pos else 0.1
    hi = 10 ** math.ceil(math.log10(max(pos))) if pos else 1.0
    if hi <= lo:
        hi = lo * 10
    left, right, top, row_h = 170, 80, 34, 30
    plot_w = width - left - right
    height = top + row_h * len(stages) + 40

    def x(v: float) -> float:
        v = min(max(v, lo), hi)
        return left + plot_w * (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    body = _legend(left, 16, [("baseline", BASE_COLOR), ("candidate", CAND_COLOR)])
    body.append(f'<text x="{left + 260}" y="17" fill="#555">bar: p50 · light: p50–p90 · tick: p99 (ms, log)</text>')
    decade = lo
    while decade <= hi * 1.0001:
        xd = x(decade)
        body.append(f'<line x1="{xd:.1f}" y1="{top - 4}" x2="{xd:.1f}" y2="{height - 34}" stroke="#ddd"/>')
        label = human(decade, 0) if decade >= 1 else human(decade, -math.floor(math.log10(decade)))
        body.append(f'<text x="{xd:.1f}" y="{height - 20}" text-anchor="middle" fill="#555">{label}</text>')
        decade *= 10
    body.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 5}" text-anchor="middle">milliseconds</text>')
    for i, stage in enumerate(stages):
        y0 = top + i * row_h
        name, fill = (f"{stage} *", ' fill="#888"') if stage in apart else (stage, "")
        body.append(f'<text x="{left - 8}" y="{y0 + 15}" text-anchor="end"{fill}>{_e(name)}</text>')
        for j, (sec, color) in enumerate(((baseline, BASE_COLOR), (candidate, CAND_COLOR))):
            st = sec.get(stage)
            if st is None or not st.n or st.p50 is None or st.p90 is None or st.p99 is None:
                continue
            yb = y0 + 3 + j * 12
            x0, x50, x90, x99 = x(lo), x(st.p50), x(st.p90), x(st.p99)
            body.append(f'<rect x="{x0:.1f}" y="{yb}" width="{max(1.0, x50 - x0):.1f}" height="10" fill="{color}"/>')
            body.append(
                f'<rect x="{x50:.1f}" y="{yb}" width="{max(0.0, x90 - x50):.1f}" height="10" fill="{color}" '
                'fill-opacity="0.35"/>'
            )
            body.append(
                f'<line x1="{x99:.1f}" y1="{yb - 1}" x2="{x99:.1f}" y2="{yb + 11}" stroke="{color}" stroke-width="2"/>'
            )
            body.append(f'<text x="{x99 + 5:.1f}" y="{yb + 9}" fill="#333">{human(st.p50)}</text>')
    return _svg(width, height, "Latency per stage (ms)", body)


def svg_cdf(series: Sequence[tuple[str, str, Sequence[float]]], title: str, width: int = 450, height: int = 280) -> str:
    """Empirical CDF lines (x linear from 0, y 0–1) of one value per run."""
    xs_all = [v for _, _, vs in series for v in vs]
    if not xs_all:
        return f"<p>No values for {_e(title)}.</p>"
    left, right, top, bottom = 50, 24, 30, 40
    pw, ph = width - left - right, height - top - bottom
    ticks = nice_ticks(max(xs_all))
    hi = ticks[-1]
    body = _legend(left, 16, [(name, color) for name, color, _ in series])
    for v in ticks:
        xv = left + pw * v / hi
        body.append(f'<line x1="{xv:.1f}" y1="{top}" x2="{xv:.1f}" y2="{top + ph}" stroke="#eee"/>')
        label = _tick(v, ticks[1] - ticks[0])
        body.append(f'<text x="{xv:.1f}" y="{top + ph + 14}" text-anchor="middle" fill="#555">{label}</text>')
    for t in range(5):
        f = t / 4
        yv = top + ph * (1 - f)
        body.append(f'<line x1="{left}" y1="{yv:.1f}" x2="{left + pw}" y2="{yv:.1f}" stroke="#eee"/>')
        body.append(f'<text x="{left - 6}" y="{yv + 4:.1f}" text-anchor="end" fill="#555">{f:.2f}</text>')
    body.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">{_e(title)}</text>')
    for _, color, vs in series:
        if not vs:
            continue
        pts = [f"{left:.1f},{top + ph:.1f}"]
        xs = sorted(vs)
        for i, v in enumerate(xs):
            xv = left + pw * v / hi
            pts.append(f"{xv:.1f},{top + ph * (1 - i / len(xs)):.1f}")
            pts.append(f"{xv:.1f},{top + ph * (1 - (i + 1) / len(xs)):.1f}")
        body.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="{color}" stroke-width="2"/>')
    return _svg(width, height, title, body)


def svg_grouped_bars(
    groups: Sequence[str],
    series: Sequence[tuple[str, str, Sequence[float | None]]],
    title: str,
    *,
    ymax: float | None = None,
    digits: int = 2,
    width: int = 450,
    height: int = 280,
) -> str:
    """Vertical bars, one group per label and one bar per series, value printed above each bar."""
    vals = [v for _, _, vs in series for v in vs if v is not None]
    peak = ymax if ymax is not None else (max(vals) * 1.1 if vals and max(vals) > 0 else 1.0)
    ticks = nice_ticks(peak, 5 if digits else min(5, max(1, math.ceil(peak))))
    step = ticks[1] - ticks[0]
    if digits == 0 and step < 1:  # counts: whole-number ticks
        ticks, step = [float(i) for i in range(math.ceil(peak) + 1)], 1.0
    top_v = ticks[-1]
    left, right, top, bottom = 50, 20, 30, 44
    pw, ph = width - left - right, height - top - bottom
    body = _legend(left, 16, [(name, color) for name, color, _ in series])
    for v in ticks:
        yv = top + ph * (1 - v / top_v)
        body.append(f'<line x1="{left}" y1="{yv:.1f}" x2="{left + pw}" y2="{yv:.1f}" stroke="#eee"/>')
        body.append(f'<text x="{left - 6}" y="{yv + 4:.1f}" text-anchor="end" fill="#555">{_tick(v, step)}</text>')
    gw = pw / max(1, len(groups))
    bw = gw * 0.7 / max(1, len(series))
    for gi, g in enumerate(groups):
        gx = left + gi * gw + gw * 0.15
        body.append(f'<text x="{left + gi * gw + gw / 2:.1f}" y="{top + ph + 16}" text-anchor="middle">{_e(g)}</text>')
        for si, (_, color, vs) in enumerate(series):
            bar = vs[gi]
            if bar is None:
                continue
            h = ph * min(bar, top_v) / top_v if top_v > 0 else 0
            xb = gx + si * bw
            body.append(
                f'<rect x="{xb:.1f}" y="{top + ph - h:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" fill="{color}"/>'
            )
            body.append(
                f'<text x="{xb + bw / 2 - 1:.1f}" y="{top + ph - h - 4:.1f}" text-anchor="middle" fill="#333">'
                f"{human(bar, digits)}</text>"
            )
    body.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">{_e(title)}</text>')
    return _svg(width, height, title, body)


def svg_histogram(values: Sequence[float], title: str, *, bins: int = 20, width: int = 450, height: int = 280) -> str:
    """Histogram of values in 0–1 (similarities, overlaps)."""
    if not values:
        return f"<p>No values for {_e(title)}.</p>"
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int(v * bins)))] += 1
    left, right, top, bottom = 40, 20, 20, 44
    pw, ph = width - left - right, height - top - bottom
    ticks = nice_ticks(max(counts), min(5, max(counts)))
    step = max(1.0, ticks[1] - ticks[0])
    ticks = [float(i * step) for i in range(math.ceil(max(counts) / step) + 1)]
    cmax = ticks[-1]
    body: list[str] = []
    for v in ticks:
        yv = top + ph * (1 - v / cmax)
        body.append(f'<line x1="{left}" y1="{yv:.1f}" x2="{left + pw}" y2="{yv:.1f}" stroke="#eee"/>')
        body.append(f'<text x="{left - 6}" y="{yv + 4:.1f}" text-anchor="end" fill="#555">{human(v, 0)}</text>')
    bw = pw / bins
    for i, c in enumerate(counts):
        h = ph * c / cmax
        body.append(
            f'<rect x="{left + i * bw:.1f}" y="{top + ph - h:.1f}" width="{bw - 1:.1f}" height="{h:.1f}" '
            f'fill="{NEUTRAL_COLOR}"/>'
        )
    for t in range(6):
        xv = left + pw * t / 5
        body.append(f'<text x="{xv:.1f}" y="{top + ph + 14}" text-anchor="middle" fill="#555">{t / 5:.1f}</text>')
    body.append(f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle">{_e(title)}</text>')
    return _svg(width, height, title, body)
