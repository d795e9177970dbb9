"""The evaluation report as one self-contained HTML page: tables and inline SVG plots, nothing fetched.

:func:`render_html` renders a :class:`workers.evaluation.models.Report`: the gates' verdict, a summary table of
both runs with the change between them, the latency per stage (``svg_latency``), retrieval quality, the
end-to-end latency CDF (``svg_cdf``), tokens and statuses (``svg_grouped_bars``), histograms of the
between-runs values (``svg_histogram``), the provenance of each run and one row per request. Baseline is
drawn in blue, candidate in orange.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence

from workers.evaluation.analysis import MISSING, ordered_stages
from workers.evaluation.models import Report, RunAnswer, Summary

BASE_COLOR = "#4c78a8"
CAND_COLOR = "#f58518"
NEUTRAL_COLOR = "#54a24b"


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


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


def svg_latency(baseline: Mapping[str, Summary], candidate: Mapping[str, Summary], width: int = 920) -> str:
    """Horizontal bars per stage and run on a log axis (ms): bar to p50, light bar to p90, tick at p99."""
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
        label = _fmt(decade, 0) if decade >= 1 else f"{decade:g}"
        body.append(f'<text x="{xd:.1f}" y="{height - 20}" text-anchor="middle" fill="#555">{label}</text>')
        decade *= 10
    body.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 5}" text-anchor="middle">milliseconds</text>')
    for i, stage in enumerate(stages):
        y0 = top + i * row_h
        body.append(f'<text x="{left - 8}" y="{y0 + 15}" text-anchor="end">{_e(stage)}</text>')
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
            body.append(f'<text x="{x99 + 5:.1f}" y="{yb + 9}" fill="#333">{_fmt(st.p50)}</text>')
    return _svg(width, height, "Latency per stage (ms)", body)


def svg_cdf(series: Sequence[tuple[str, str, Sequence[float]]], title: str, width: int = 450, height: int = 280) -> str:
    """Empirical CDF lines (x linear from 0, y 0–1) of one value per run."""
    xs_all = [v for _, _, vs in series for v in vs]
    if not xs_all:
        return f"<p>No values for {_e(title)}.</p>"
    left, right, top, bottom = 50, 20, 30, 40
    pw, ph = width - left - right, height - top - bottom
    hi = max(xs_all) * 1.05 or 1.0
    body = _legend(left, 16, [(name, color) for name, color, _ in series])
    for t in range(6):
        v = hi * t / 5
        xv = left + pw * t / 5
        body.append(f'<line x1="{xv:.1f}" y1="{top}" x2="{xv:.1f}" y2="{top + ph}" stroke="#eee"/>')
        body.append(f'<text x="{xv:.1f}" y="{top + ph + 14}" text-anchor="middle" fill="#555">{_fmt(v, 0)}</text>')
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
    top_v = ymax if ymax is not None else (max(vals) * 1.15 if vals and max(vals) > 0 else 1.0)
    if ymax is None and digits == 0:
        top_v = float(max(4, math.ceil(top_v / 4) * 4))  # whole-number ticks for counts
    left, right, top, bottom = 50, 20, 30, 44
    pw, ph = width - left - right, height - top - bottom
    body = _legend(left, 16, [(name, color) for name, color, _ in series])
    for t in range(5):
        f = t / 4
        yv = top + ph * (1 - f)
        body.append(f'<line x1="{left}" y1="{yv:.1f}" x2="{left + pw}" y2="{yv:.1f}" stroke="#eee"/>')
        body.append(
            f'<text x="{left - 6}" y="{yv + 4:.1f}" text-anchor="end" fill="#555">{_fmt(top_v * f, digits)}</text>'
        )
    gw = pw / max(1, len(groups))
    bw = gw * 0.7 / max(1, len(series))
    for gi, g in enumerate(groups):
        gx = left + gi * gw + gw * 0.15
        body.append(f'<text x="{left + gi * gw + gw / 2:.1f}" y="{top + ph + 16}" text-anchor="middle">{_e(g)}</text>')
        for si, (_, color, vs) in enumerate(series):
            v = vs[gi]
            if v is None:
                continue
            h = ph * min(v, top_v) / top_v if top_v > 0 else 0
            xb = gx + si * bw
            body.append(
                f'<rect x="{xb:.1f}" y="{top + ph - h:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" fill="{color}"/>'
            )
            body.append(
                f'<text x="{xb + bw / 2 - 1:.1f}" y="{top + ph - h - 4:.1f}" text-anchor="middle" fill="#333">'
                f"{_fmt(v, digits)}</text>"
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
    cmax = max(counts)
    body: list[str] = []
    for t in range(5):
        f = t / 4
        yv = top + ph * (1 - f)
        body.append(f'<line x1="{left}" y1="{yv:.1f}" x2="{left + pw}" y2="{yv:.1f}" stroke="#eee"/>')
        body.append(f'<text x="{left - 6}" y="{yv + 4:.1f}" text-anchor="end" fill="#555">{cmax * f:.0f}</text>')
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


_CSS = """
body{font-family:"DejaVu Sans",Arial,sans-serif;margin:24px;color:#222;max-width:1240px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
.meta{color:#555;font-size:13px} .banner{padding:10px 14px;border-radius:6px;font-weight:bold;margin:12px 0}
.pass{background:#e3f4e1;color:#1e6b1a} .fail{background:#fbe3e1;color:#a3221a}
table{border-collapse:collapse;font-size:12px;margin:6px 0}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left} .diff{background:#fff3cd}
.grid{display:flex;flex-wrap:wrap;gap:16px} .b{color:#4c78a8;font-weight:bold} .c{color:#f58518;font-weight:bold}
.ok{color:#1e6b1a} .bad{color:#a3221a} .q{max-width:420px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
"""


def _cmp_row(name: str, b: float | None, c: float | None, digits: int = 3) -> str:
    delta = "" if b is None or c is None else f"{c - b:+.{digits}f}"
    return f'<tr><td class="l">{_e(name)}</td><td>{_fmt(b, digits)}</td><td>{_fmt(c, digits)}</td><td>{delta}</td></tr>'


def _ok_e2e(answers: Iterable[RunAnswer]) -> list[float]:
    """End-to-end latencies (ms) of the ``ok`` answers that have one."""
    return [a.end_to_end_ms for a in answers if a.status == "ok" and a.end_to_end_ms is not None]


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG; nothing is fetched)."""
    b, c, cmp_ = report.baseline, report.candidate, report.compare
    parts: list[str] = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>ragstream evaluation</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>ragstream evaluation</h1>",
        f"<div class='meta'>generated {_e(report.generated_at.isoformat())} · {report.requests_compared} requests · "
        f"<span class='b'>baseline</span> {_e(b.source)} · <span class='c'>candidate</span> {_e(c.source)}"
        + (f" · labels {_e(report.labels)}" if report.labels else "")
        + "</div>",
    ]
    gates = report.gates
    if gates:
        ok = report.passed
        n_fail = sum(1 for g in gates if not g.passed)
        parts.append(
            f"<div class='banner {'pass' if ok else 'fail'}'>"
            + (f"PASS: all {len(gates)} gates hold" if ok else f"FAIL: {n_fail} of {len(gates)} gates regressed")
            + "</div><table><tr><th class='l'>gate</th><th>baseline</th><th>candidate</th><th>limit</th>"
            "<th class='l'>result</th></tr>"
        )
        for g in gates:
            cls = "ok" if g.passed else "bad"
            parts.append(
                f"<tr><td class='l'>{_e(g.gate)}</td><td>{_fmt(g.baseline, 3)}</td>"
                f"<td>{_fmt(g.candidate, 3)}</td><td>{_fmt(g.limit, 3)}</td>"
                f"<td class='l {cls}'>{'pass' if g.passed else 'FAIL'}: {_e(g.reason)}</td></tr>"
            )
        parts.append("</table>")

    # summary table
    parts.append(
        "<h2>Summary</h2><table><tr><th class='l'>metric</th><th>baseline</th><th>candidate</th><th>Δ</th></tr>"
    )
    for k in ("total", "ok", "error", "model_unavailable", "rejected", "dead_letter", "expired", "no_context", MISSING):
        parts.append(_cmp_row(f"requests {k}", b.counts.get(k), c.counts.get(k), 0))
    for k, rate_b, rate_c in (
        ("ok", b.rates.ok, c.rates.ok),
        ("error", b.rates.error, c.rates.error),
        ("expired", b.rates.expired, c.rates.expired),
        ("missing", b.rates.missing, c.rates.missing),
        ("no_context", b.rates.no_context, c.rates.no_context),
    ):
        parts.append(_cmp_row(f"rate {k}", rate_b, rate_c))
    for k in ("hit@1", "hit@5", "mrr"):
        if b.retrieval.get(k) is not None or c.retrieval.get(k) is not None:
            parts.append(_cmp_row(k, b.retrieval.get(k), c.retrieval.get(k)))
    for stage in ("end_to_end_ms", "llm_total_ms"):
        for p in ("p50", "p90", "p99"):
            parts.append(_cmp_row(f"{stage} {p}", _stat(b.latency_ms, stage, p), _stat(c.latency_ms, stage, p), 1))
    for t, tb, tc in (
        ("prompt", b.tokens.prompt, c.tokens.prompt),
        ("completion", b.tokens.completion, c.tokens.completion),
    ):
        parts.append(_cmp_row(f"{t} tokens mean", tb.mean, tc.mean, 1))
    sim = cmp_.answer_similarity
    parts.append("</table><table><tr><th class='l'>between runs</th><th>value</th></tr>")
    parts.append(f"<tr><td class='l'>answered ok by both</td><td>{cmp_.both_ok} of {cmp_.joined} joined</td></tr>")
    parts.append(
        f"<tr><td class='l'>answer similarity (cosine) mean / p50 / min</td><td>{_fmt(sim.mean, 3)} / "
        f"{_fmt(sim.p50, 3)} / {_fmt(sim.min, 3)}</td></tr>"
    )
    parts.append(f"<tr><td class='l'>identical answers</td><td>{_fmt(cmp_.identical_answers, 3)}</td></tr>")
    for overlap, name in ((cmp_.chunk_jaccard, "chunk ids"), (cmp_.document_jaccard, "document ids")):
        parts.append(f"<tr><td class='l'>Jaccard of retrieved {name} (mean)</td><td>{_fmt(overlap.mean, 3)}</td></tr>")
    parts.append("</table>")

    # plots
    parts.append("<h2>Latency per stage</h2>")
    parts.append(svg_latency(b.latency_ms, c.latency_ms))
    e2e = [
        ("baseline", BASE_COLOR, _ok_e2e(r.baseline for r in report.requests)),
        ("candidate", CAND_COLOR, _ok_e2e(r.candidate for r in report.requests)),
    ]
    parts.append("<h2>Quality, tokens and end-to-end latency</h2><div class='grid'>")
    if b.retrieval.labelled or c.retrieval.labelled:
        ks = ["hit@1", "hit@5", "mrr"]
        parts.append(
            svg_grouped_bars(
                ks,
                [
                    ("baseline", BASE_COLOR, [b.retrieval.get(k) for k in ks]),
                    ("candidate", CAND_COLOR, [c.retrieval.get(k) for k in ks]),
                ],
                "retrieval quality (labelled questions)",
                ymax=1.0,
            )
        )
    parts.append(svg_cdf(e2e, "end-to-end latency CDF (ms)"))
    parts.append(
        svg_grouped_bars(
            ["prompt", "completion"],
            [
                ("baseline", BASE_COLOR, [b.tokens.prompt.mean, b.tokens.completion.mean]),
                ("candidate", CAND_COLOR, [c.tokens.prompt.mean, c.tokens.completion.mean]),
            ],
            "tokens per answer (mean)",
            digits=0,
        )
    )
    statuses = ["ok", "error", "expired", MISSING]
    parts.append(
        svg_grouped_bars(
            statuses,
            [
                ("baseline", BASE_COLOR, [b.counts.get(s, 0) for s in statuses]),
                ("candidate", CAND_COLOR, [c.counts.get(s, 0) for s in statuses]),
            ],
            "requests by status (error includes model_unavailable, rejected, dead letters)",
            digits=0,
        )
    )
    parts.append("</div><h2>Between runs</h2><div class='grid'>")
    sims = [r.answer_similarity for r in report.requests if r.answer_similarity is not None]
    cj = [r.chunk_jaccard for r in report.requests if r.chunk_jaccard is not None]
    parts.append(svg_histogram(sims, "answer similarity (cosine, all-MiniLM-L6-v2)"))
    parts.append(svg_histogram(cj, "Jaccard of retrieved chunk ids"))
    parts.append("</div>")

    # provenance
    parts.append("<h2>Provenance</h2>")
    pb = b.provenance[0].provenance if b.provenance else {}
    pc = c.provenance[0].provenance if c.provenance else {}
    parts.append("<table><tr><th class='l'>setting</th><th class='l'>baseline</th><th class='l'>candidate</th></tr>")
    for k in sorted(set(pb) | set(pc)):
        vb, vc = pb.get(k), pc.get(k)
        cls = " class='diff'" if vb != vc else ""
        parts.append(
            f"<tr{cls}><td class='l'>{_e(k)}</td><td class='l'>{_e(json.dumps(vb))}</td>"
            f"<td class='l'>{_e(json.dumps(vc))}</td></tr>"
        )
    parts.append("</table>")
    for sec in (b, c):
        if len(sec.provenance) > 1:
            parts.append(
                f"<p class='bad'>{_e(sec.label)}: answers come from {len(sec.provenance)} different "
                "configurations (see the JSON report).</p>"
            )

    # per request
    parts.append(
        "<h2>Requests</h2><table><tr><th class='l'>query</th><th>base status</th><th>cand status</th>"
        "<th>base e2e ms</th><th>cand e2e ms</th><th>base hit rank</th><th>cand hit rank</th>"
        "<th>similarity</th><th>chunk J</th></tr>"
    )
    for r in report.requests:
        rb, rc = r.baseline, r.candidate
        parts.append(
            f"<tr><td class='l q' title='{_e(r.request_id)}'>{_e(r.query or r.request_id)}</td>"
            f"<td>{_e(rb.status)}</td><td>{_e(rc.status)}</td>"
            f"<td>{_fmt(rb.end_to_end_ms, 0)}</td><td>{_fmt(rc.end_to_end_ms, 0)}</td>"
            f"<td>{_e(rb.first_hit_rank or '–')}</td><td>{_e(rc.first_hit_rank or '–')}</td>"
            f"<td>{_fmt(r.answer_similarity, 3)}</td><td>{_fmt(r.chunk_jaccard, 2)}</td></tr>"
        )
    parts.append("</table></body></html>")
    return "".join(parts)
