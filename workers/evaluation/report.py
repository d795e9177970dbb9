"""Build the evaluation report from two runs and write it (``report.json`` + ``report.html``).

The requests compared are those of the *candidate* run (the replayed ones); the baseline's answers to the
same request ids are joined to them (:func:`workers.evaluation.runs.evaluation_ids`). The report
(:class:`workers.evaluation.models.Report`) holds both runs' sections and the between-runs metrics
(:mod:`workers.evaluation.analysis`), one row per request (both answers side by side; the requests whose status
or hit changed first), and the gates' results (:mod:`workers.evaluation.gates`); ``passed`` is false when a
gate fails.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from workers.contracts.errors import ConfigError
from workers.evaluation.analysis import (
    MISSING,
    PROCESSING_STAGE,
    Embed,
    compare_runs,
    first_hit_rank,
    not_comparable_stages,
    run_section,
)
from workers.evaluation.gates import Gate, check_gate
from workers.evaluation.models import Report, RequestRow, RunAnswer, SourceRow
from workers.evaluation.render import render_html
from workers.evaluation.runs import Answer, RunData, evaluation_ids, normalize_query, with_processing


def _run_answer(a: Answer | None, relevant: frozenset[str] | None) -> RunAnswer:
    """One run's answer as a report row (``missing`` when the run has none)."""
    if a is None:
        return RunAnswer(status=MISSING, end_to_end_ms=None, sources=[], first_hit_rank=None, completion_tokens=0)
    return RunAnswer(
        status=a.status,
        answer=a.answer,
        error_class=a.error_class,
        end_to_end_ms=a.timings_ms.get("end_to_end_ms"),
        processing_ms=with_processing(a.timings_ms).get(PROCESSING_STAGE),
        sources=[SourceRow(document_id=s.document_id, chunk_id=s.chunk_id, score=s.score) for s in a.sources],
        first_hit_rank=first_hit_rank(a.sources, relevant) if relevant else None,
        completion_tokens=a.completion_tokens,
    )


def changes(base: RunAnswer, cand: RunAnswer, labelled: bool) -> list[str]:
    """What differs between two runs' answers to one request: ``status``, and ``hit`` when the question is
    labelled and a relevant source was found in one run but not in the other."""
    out = []
    if base.status != cand.status:
        out.append("status")
    if labelled and (base.first_hit_rank is None) != (cand.first_hit_rank is None):
        out.append("hit")
    return out


def build_report(
    base: RunData,
    cand: RunData,
    *,
    labels: Mapping[str, frozenset[str]] | None = None,
    embed: Embed | None = None,
    gates: Sequence[Gate] = (),
    labels_path: str | None = None,
) -> Report:
    """The evaluation report (see the module docstring for its content).

    Args:
        base: the baseline run.
        cand: the candidate run.
        labels: normalized query → relevant document ids (:func:`load_labels`); ``None`` = no retrieval quality.
        embed: texts → vectors for answer similarity; ``None`` skips it.
        gates: release gates; ``passed`` is false when one fails.
        labels_path: shown in the report.
    """
    ids = evaluation_ids(base, cand)
    baseline = run_section(base, ids, labels)
    candidate = run_section(cand, ids, labels)
    compare, per = compare_runs(ids, base, cand, embed)
    apart = not_comparable_stages(base, cand, set(baseline.latency_ms) | set(candidate.latency_ms))
    results = [check_gate(g, baseline, candidate, compare, apart) for g in gates]
    queries = {**base.queries, **cand.queries}
    requests = []
    for rid in ids:
        relevant = labels.get(normalize_query(queries.get(rid) or "")) if labels else None
        scores = per.get(rid)  # only for requests both runs answered ok
        b, c = _run_answer(base.answers.get(rid), relevant), _run_answer(cand.answers.get(rid), relevant)
        requests.append(
            RequestRow(
                request_id=str(rid),
                query=queries.get(rid),
                baseline=b,
                candidate=c,
                relevant=sorted(relevant or ()),
                changed=changes(b, c, relevant is not None),
                chunk_overlap=scores.chunk_overlap if scores else None,
                document_overlap=scores.document_overlap if scores else None,
                answer_similarity=scores.answer_similarity if scores else None,
            )
        )
    requests.sort(key=lambda r: 0 if r.changed else 1)  # stable: changed first, then in query order
    return Report(
        generated_at=datetime.now(UTC),
        labels=labels_path,
        requests_compared=len(ids),
        baseline=baseline,
        candidate=candidate,
        compare=compare,
        gates=results,
        passed=all(r.passed for r in results),
        latency_not_comparable=apart,
        requests=requests,
    )


def write_report(report: Report, out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.json`` (:meth:`Report.as_json`) and ``report.html`` into ``out_dir`` (created if missing).

    Returns:
        The paths of the JSON and the HTML file.

    Raises:
        ConfigError: the folder cannot be written.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        jp, hp = out_dir / "report.json", out_dir / "report.html"
        jp.write_text(json.dumps(report.as_json(), indent=2, default=str) + "\n", encoding="utf-8")
        hp.write_text(render_html(report), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the report into {out_dir}: {exc}") from exc
    return jp, hp
