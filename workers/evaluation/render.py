"""The evaluation report as one self-contained HTML page: tables, inline SVG plots, a little inline JavaScript;
nothing is fetched.

:func:`render_html` renders a :class:`workers.evaluation.models.Report`: the gates' verdict, a summary of both
runs with the change between them (absolute and percent), which latencies compare the runs and which do not
(queue time of replayed traffic), the side-by-side answers (:mod:`workers.evaluation.render_answers`), the
plots (:mod:`workers.evaluation.render_svg`) and the provenance of each run. Numbers are printed for people
(:mod:`workers.evaluation.numbers`).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable

from workers.evaluation.analysis import HIT_KS, MISSING, PROCESSING_STAGE
from workers.evaluation.models import Report, RunAnswer, RunSection, Summary
from workers.evaluation.numbers import delta, human
from workers.evaluation.render_answers import ANSWERS_CSS, answers_table
from workers.evaluation.render_svg import (
    BASE_COLOR,
    CAND_COLOR,
    svg_cdf,
    svg_grouped_bars,
    svg_histogram,
    svg_latency,
)

_CSS = """
body{font-family:"DejaVu Sans",Arial,sans-serif;margin:24px;color:#222;max-width:1500px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
.meta{color:#555;font-size:13px} .banner{padding:10px 14px;border-radius:6px;font-weight:bold;margin:12px 0}
.pass{background:#e3f4e1;color:#1e6b1a} .fail{background:#fbe3e1;color:#a3221a}
table{border-collapse:collapse;font-size:12px;margin:6px 0}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left} .diff{background:#fff3cd}
.grid{display:flex;flex-wrap:wrap;gap:16px} .b{color:#4c78a8;font-weight:bold} .c{color:#f58518;font-weight:bold}
.ok{color:#1e6b1a} .bad{color:#a3221a} .note{color:#555;font-size:12px;max-width:1100px} .apart{color:#888}
"""


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _cmp_row(name: str, b: float | None, c: float | None, digits: int | None = None, cls: str = "") -> str:
    klass = f" class='{cls}'" if cls else ""
    return (
        f"<tr{klass}><td class='l'>{_e(name)}</td><td>{human(b, digits)}</td><td>{human(c, digits)}</td>"
        f"<td>{_e(delta(b, c, digits))}</td></tr>"
    )


def _stat(sec: RunSection, stage: str, key: str) -> float | None:
    summary: Summary | None = sec.latency_ms.get(stage)
    return None if summary is None else summary.get(key)


def _ok(answers: Iterable[RunAnswer], attr: str) -> list[float]:
    """One latency (``end_to_end_ms`` or ``processing_ms``) of the ``ok`` answers that have it."""
    out = []
    for a in answers:
        v = getattr(a, attr)
        if a.status == "ok" and v is not None:
            out.append(float(v))
    return out


def _gates(report: Report) -> list[str]:
    gates = report.gates
    if not gates:
        return []
    n_fail = sum(1 for g in gates if not g.passed)
    parts = [
        f"<div class='banner {'pass' if report.passed else 'fail'}'>"
        + (f"PASS: all {len(gates)} gates hold" if report.passed else f"FAIL: {n_fail} of {len(gates)} gates failed")
        + "</div><table><tr><th class='l'>gate</th><th>baseline</th><th>candidate</th><th>limit</th>"
        "<th class='l'>result</th></tr>"
    ]
    for g in gates:
        cls = "ok" if g.passed else "bad"
        note = f"<br><span class='note'>{_e(g.note)}</span>" if g.note else ""
        parts.append(
            f"<tr><td class='l'>{_e(g.gate)}</td><td>{human(g.baseline)}</td><td>{human(g.candidate)}</td>"
            f"<td>{human(g.limit)}</td><td class='l {cls}'>{'pass' if g.passed else 'FAIL'}: {_e(g.reason)}{note}</td>"
            "</tr>"
        )
    parts.append("</table>")
    return parts


def retrieval_notes(report: Report) -> list[str]:
    """Sentences on how hit@k was computed: how many questions were labelled, and where a run's k caps it."""
    b, c = report.baseline, report.candidate
    notes = []
    if report.labels is None:
        notes.append("No labels file (--labels): hit@k and MRR are not computed.")
    else:
        notes.append(
            f"hit@k and MRR: {c.retrieval.labelled} of {report.requests_compared} requests matched a labelled question "
            f"of {report.labels} (by query text); a hit is a source whose document is one of the question's topics."
        )
    top = max(HIT_KS)
    for sec in (b, c):
        k = sec.retrieval.sources_k
        if k is not None and k < top:
            notes.append(
                f"The {sec.label} ({sec.source}) retrieved at most {k} sources per request: its hit@{top} is "
                f"hit@{k}, capped by k."
            )
    return notes


def _summary(report: Report) -> list[str]:
    b, c = report.baseline, report.candidate
    apart = set(report.latency_not_comparable)
    parts = [
        "<h2>Summary</h2><table><tr><th class='l'>metric</th>"
        f"<th><span class='b'>baseline</span><br>{_e(b.source)}</th>"
        f"<th><span class='c'>candidate</span><br>{_e(c.source)}</th><th>Δ (absolute, %)</th></tr>"
    ]
    for k in ("total", "ok", "error", "model_unavailable", "rejected", "dead_letter", "expired", "no_context", MISSING):
        parts.append(_cmp_row(f"requests {k}", b.counts.get(k), c.counts.get(k), 0))
    for k in ("ok", "error", "expired", "missing", "no_context"):
        parts.append(_cmp_row(f"rate {k}", getattr(b.rates, k), getattr(c.rates, k), 3))
    for k in ("hit@1", "hit@5", "mrr"):
        if b.retrieval.get(k) is not None or c.retrieval.get(k) is not None:
            parts.append(_cmp_row(k, b.retrieval.get(k), c.retrieval.get(k), 3))
    parts.append(_cmp_row("labelled requests", b.retrieval.labelled, c.retrieval.labelled, 0))
    for stage in (PROCESSING_STAGE, "llm_total_ms", "end_to_end_ms"):
        for p in ("p50", "p90", "p99"):
            star = " *" if stage in apart else ""
            parts.append(
                _cmp_row(f"{stage} {p}{star}", _stat(b, stage, p), _stat(c, stage, p), 0, "apart" if star else "")
            )
    parts.append(_cmp_row("prompt tokens mean", b.tokens.prompt.mean, c.tokens.prompt.mean, 1))
    parts.append(_cmp_row("completion tokens mean", b.tokens.completion.mean, c.tokens.completion.mean, 1))
    cmp_ = report.compare
    sim = cmp_.answer_similarity
    parts.append("</table><table><tr><th class='l'>between runs</th><th>value</th></tr>")
    parts.append(f"<tr><td class='l'>answered ok by both</td><td>{cmp_.both_ok} of {cmp_.joined} joined</td></tr>")
    parts.append(
        "<tr><td class='l'>answer similarity (cosine of all-MiniLM-L6-v2 embeddings) mean / p50 / min</td>"
        f"<td>{human(sim.mean, 3)} / {human(sim.p50, 3)} / {human(sim.min, 3)}</td></tr>"
    )
    parts.append(f"<tr><td class='l'>identical answers</td><td>{human(cmp_.identical_answers, 3)}</td></tr>")
    for ov, name in ((cmp_.chunk_overlap, "chunks"), (cmp_.document_overlap, "documents")):
        parts.append(
            f"<tr><td class='l'>overlap of the retrieved {name}: share of the smaller set found in the larger "
            f"(mean)</td><td>{human(ov.mean, 3)}</td></tr>"
        )
    parts.append("</table>")
    parts.extend(f"<p class='note'>{_e(n)}</p>" for n in retrieval_notes(report))
    parts.append(
        "<p class='note'>Overlap = |A ∩ B| / min(|A|, |B|): 1.0 when every source of the run with fewer sources is "
        "among the other run's (k=3 within k=5 gives 1.0), 0 when they share none.</p>"
    )
    return parts


def latency_note(report: Report) -> str:
    """Which latencies compare the two runs, in words."""
    apart = report.latency_not_comparable
    stages = [s for s in report.candidate.latency_ms if s not in apart]
    text = (
        f"{PROCESSING_STAGE} is end to end minus the queue waits: the time the stages worked on a request. "
        f"Comparable between the runs: {', '.join(stages) or 'none'}."
    )
    if apart:
        text += (
            f" Not comparable (*): {', '.join(apart)}: they include the time replayed requests waited in the shadow "
            "topics, which depends on how the replay delivered them (a burst, or before the shadow workers were "
            "ready), not on the change under evaluation. Gate latency on processing time (latency.p50)."
        )
    return text


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page (inline CSS, SVG and script; nothing is fetched)."""
    b, c = report.baseline, report.candidate
    labelled = f" · labels {_e(report.labels)} ({c.retrieval.labelled} labelled)" if report.labels else ""
    parts: list[str] = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>ragstream evaluation</title>",
        f"<style>{_CSS}{ANSWERS_CSS}</style></head><body>",
        "<h1>ragstream evaluation</h1>",
        f"<div class='meta'>generated {_e(report.generated_at.isoformat(timespec='seconds'))} · "
        f"{report.requests_compared} requests · <span class='b'>baseline</span> {_e(b.source)} · "
        f"<span class='c'>candidate</span> {_e(c.source)}{labelled} · "
        "<a href='#answers-side-by-side'>answers side by side</a></div>",
    ]
    parts.extend(_gates(report))
    parts.extend(_summary(report))
    parts.append("<h2>Latency per stage</h2>")
    parts.append(f"<p class='note'>{_e(latency_note(report))}</p>")
    parts.append(svg_latency(b.latency_ms, c.latency_ms, apart=report.latency_not_comparable))
    parts.append(answers_table(report))

    parts.append("<h2>Quality, tokens and latency</h2><div class='grid'>")
    if b.retrieval.labelled or c.retrieval.labelled:
        ks = ["hit@1", "hit@5", "mrr"]
        parts.append(
            svg_grouped_bars(
                ks,
                [
                    ("baseline", BASE_COLOR, [b.retrieval.get(k) for k in ks]),
                    ("candidate", CAND_COLOR, [c.retrieval.get(k) for k in ks]),
                ],
                f"retrieval quality ({c.retrieval.labelled} labelled questions)",
                ymax=1.0,
            )
        )
    for attr, title in (
        ("processing_ms", "processing latency CDF (ms)"),
        ("end_to_end_ms", "end-to-end latency CDF (ms)" + (" *" if report.latency_not_comparable else "")),
    ):
        series = [
            ("baseline", BASE_COLOR, _ok((r.baseline for r in report.requests), attr)),
            ("candidate", CAND_COLOR, _ok((r.candidate for r in report.requests), attr)),
        ]
        parts.append(svg_cdf(series, title))
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
    co = [r.chunk_overlap for r in report.requests if r.chunk_overlap is not None]
    parts.append(svg_histogram(sims, "answer similarity (cosine, all-MiniLM-L6-v2)"))
    parts.append(svg_histogram(co, "overlap of retrieved chunks (share of the smaller set)"))
    parts.append("</div>")

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
    parts.append("</body></html>")
    return "".join(parts)
