"""The evaluation's metrics: per run and between two runs (pure: no Kafka, no database, no model).

Per run (:func:`run_section`), over the evaluation set: counts and rates by status; latency percentiles per
stage (ms, from ``Response.timings_ms``, over answers with status ``ok``); tokens per answer; with a labels
file, hit@1, hit@5 and MRR of the sources; the distinct provenances of the answers. Between runs
(:func:`compare_runs`), over the requests both answered ``ok``: answer similarity (cosine of the answers'
embeddings, computed by the ``embed`` function passed in), and the overlap of retrieved chunk ids and document
ids (the share of the smaller set found in the larger). ``processing_ms`` (end to end minus the queue waits)
is the latency that compares a replayed run with a live one; queue stages do not
(:func:`not_comparable_stages`). The results are parts of the typed report (:mod:`workers.evaluation.models`).
"""

from __future__ import annotations

import json
import math
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

from workers.evaluation.models import (
    AnswerCitations,
    Compare,
    PairScores,
    ProvenanceCount,
    Rates,
    Retrieval,
    RunSection,
    Summary,
    TokenStats,
    TokenSummary,
)
from workers.evaluation.runs import (
    PROCESSING_STAGE,
    QUEUE_STAGES,
    Answer,
    RunData,
    SourceRef,
    normalize_query,
    with_processing,
)

__all__ = ["PROCESSING_STAGE", "QUEUE_STAGES"]

#: Stages in pipeline order; other keys of ``timings_ms`` follow in name order.
STAGE_ORDER = (
    "retriever_queue_ms",
    "embed_ms",
    "search_ms",
    "prompt_ms",
    "generator_queue_ms",
    "llm_ttft_ms",
    "llm_total_ms",
    "generator_ms",
    PROCESSING_STAGE,
    "end_to_end_ms",
)
#: Statuses counted as errors (``expired``, ``no_context`` and unanswered requests are counted apart).
ERROR_STATUSES = ("error", "model_unavailable", "rejected", "dead_letter")
#: Status of a request of the evaluation set that has no answer in the run.
MISSING = "missing"
#: Cut-offs reported as hit@k (the fields of :class:`~workers.evaluation.models.Retrieval`).
HIT_KS = (1, 5)

#: Texts → vectors (any length, the same model for all), for answer similarity.
Embed = Callable[[list[str]], Sequence[Sequence[float]]]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) with linear interpolation between closest ranks (numpy's default).

    Raises:
        ValueError: ``values`` is empty or ``q`` is outside 0–100.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} outside 0-100")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> Summary:
    """``n``, ``mean``, ``min``, ``p50``, ``p90``, ``p99`` and ``max`` of values (empty: only ``n`` = 0)."""
    if not values:
        return Summary(n=0)
    return Summary(
        n=len(values),
        mean=sum(values) / len(values),
        min=min(values),
        p50=percentile(values, 50),
        p90=percentile(values, 90),
        p99=percentile(values, 99),
        max=max(values),
    )


def ordered_stages(keys: Iterable[str]) -> list[str]:
    """Stage names in pipeline order (:data:`STAGE_ORDER`), unknown ones after them by name."""
    ks = set(keys)
    return [s for s in STAGE_ORDER if s in ks] + sorted(ks - set(STAGE_ORDER))


def status_counts(ids: Iterable[uuid.UUID], answers: Mapping[uuid.UUID, Answer]) -> dict[str, int]:
    """Requests by status (``missing`` = no answer), plus ``total``."""
    c: Counter[str] = Counter()
    n = 0
    for rid in ids:
        n += 1
        a = answers.get(rid)
        c[a.status if a is not None else MISSING] += 1
    out = {"total": n, "ok": 0, "error": 0, "model_unavailable": 0, "dead_letter": 0, "expired": 0, MISSING: 0}
    out.update({"rejected": 0, "no_context": 0})  # added later: after the older keys, report.json keeps its order
    out.update(c)
    return out


def rates(counts: Mapping[str, int]) -> Rates:
    """Fractions of the requests (0–1): ``ok``, ``error`` (error, model_unavailable, rejected, dead letter),
    ``expired``, ``missing`` and ``no_context``."""
    n = counts.get("total", 0)
    if n == 0:
        return Rates(ok=0.0, error=0.0, expired=0.0, missing=0.0)
    return Rates(
        ok=counts.get("ok", 0) / n,
        error=sum(counts.get(s, 0) for s in ERROR_STATUSES) / n,
        expired=counts.get("expired", 0) / n,
        missing=counts.get(MISSING, 0) / n,
        no_context=counts.get("no_context", 0) / n,
    )


def latency_stats(answers: Iterable[Answer]) -> dict[str, Summary]:
    """Per-stage latency summary (ms) over answers with status ``ok``, stages in pipeline order (``processing_ms``
    included: :func:`workers.evaluation.runs.with_processing`)."""
    per: dict[str, list[float]] = {}
    for a in answers:
        if a.status != "ok":
            continue
        for k, v in with_processing(a.timings_ms).items():
            if isinstance(v, int | float) and math.isfinite(v):
                per.setdefault(k, []).append(float(v))
    return {k: summarize(per[k]) for k in ordered_stages(per)}


def token_stats(answers: Iterable[Answer]) -> TokenStats:
    """Prompt and completion tokens per ``ok`` answer (mean, percentiles) and their totals."""
    ok = [a for a in answers if a.status == "ok"]

    def tokens(vals: list[float]) -> TokenSummary:
        return TokenSummary(**dict(summarize(vals)), total=float(sum(vals)))

    return TokenStats(
        prompt=tokens([float(a.prompt_tokens) for a in ok]),
        completion=tokens([float(a.completion_tokens) for a in ok]),
    )


def first_hit_rank(sources: Sequence[SourceRef], relevant: frozenset[str]) -> int | None:
    """1-based rank of the first source whose document id is relevant, ``None`` when none is."""
    for i, s in enumerate(sources):
        if s.document_id in relevant:
            return i + 1
    return None


def retrieval_metrics(
    ids: Iterable[uuid.UUID],
    queries: Mapping[uuid.UUID, str],
    answers: Mapping[uuid.UUID, Answer],
    labels: Mapping[str, frozenset[str]],
) -> Retrieval:
    """hit@1, hit@5 (:data:`HIT_KS`) and MRR of the sources over the labelled requests (matched by query text).

    A request without an answer, or answered without sources, counts as a miss (rank 0 in the MRR).

    Returns:
        hit@1, hit@5, MRR and the number of labelled requests; without labelled requests only
        ``labelled`` = 0.
    """
    ranks: list[int | None] = []
    for rid in ids:
        q = queries.get(rid)
        if q is None:
            continue
        relevant = labels.get(normalize_query(q))
        if relevant is None:
            continue
        a = answers.get(rid)
        ranks.append(first_hit_rank(a.sources, relevant) if a is not None else None)
    n = len(ranks)
    k_seen = max((len(answers[r].sources) for r in ids if r in answers), default=0) or None
    if n == 0:
        return Retrieval(labelled=0, sources_k=k_seen)
    hits = {k: sum(1 for r in ranks if r is not None and r <= k) / n for k in HIT_KS}
    return Retrieval(
        hit_at_1=hits[1],
        hit_at_5=hits[5],
        mrr=sum(1.0 / r for r in ranks if r is not None) / n,
        labelled=n,
        sources_k=k_seen,
    )


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    """|A ∩ B| / |A ∪ B| of two sets (1.0 when both are empty)."""
    sa, sb = set(a), set(b)
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


def overlap(a: Iterable[str], b: Iterable[str]) -> float:
    """The share of the smaller set found in the larger: |A ∩ B| / min(|A|, |B|) (the overlap coefficient).

    1.0 when both are empty, 0.0 when only one is. Unlike Jaccard it does not count the extra items of the
    larger set against the smaller: the 3 sources of a k=3 run that are all among the 5 of a k=5 run give 1.0
    (Jaccard: 0.6).
    """
    sa, sb = set(a), set(b)
    if not sa and not sb:
        return 1.0
    if not sa or not sb:
        return 0.0
    return len(sa & sb) / min(len(sa), len(sb))


def cosine(u: Sequence[float], v: Sequence[float]) -> float:
    """Cosine similarity of two vectors (0.0 when either has norm 0)."""
    dot = sum(x * y for x, y in zip(u, v, strict=True))
    nu = math.sqrt(sum(x * x for x in u))
    nv = math.sqrt(sum(y * y for y in v))
    return dot / (nu * nv) if nu > 0 and nv > 0 else 0.0


def compare_runs(
    ids: Sequence[uuid.UUID],
    base: RunData,
    cand: RunData,
    embed: Embed | None = None,
) -> tuple[Compare, dict[uuid.UUID, PairScores]]:
    """Between-runs metrics over the requests both runs answered ``ok``.

    Args:
        ids: the evaluation set.
        base: the baseline run.
        cand: the candidate run.
        embed: texts → vectors (any length, same model for all); ``None`` skips answer similarity.

    Returns:
        The summary (``joined``, ``both_ok``, ``answer_similarity``, ``identical_answers``,
        ``chunk_overlap``, ``document_overlap``, each a :func:`summarize` summary of :func:`overlap`) and
        per-request values.
    """
    both = [rid for rid in ids if rid in base.answers and rid in cand.answers]
    both_ok = [rid for rid in both if base.answers[rid].status == "ok" and cand.answers[rid].status == "ok"]
    overlaps: dict[uuid.UUID, tuple[float, float]] = {}
    identical = 0
    for rid in both_ok:
        a, b = base.answers[rid], cand.answers[rid]
        overlaps[rid] = (
            overlap((s.chunk_id for s in a.sources), (s.chunk_id for s in b.sources)),
            overlap((s.document_id for s in a.sources), (s.document_id for s in b.sources)),
        )
        identical += int((a.answer or "").strip() == (b.answer or "").strip())
    sims: dict[uuid.UUID, float] = {}
    if embed is not None and both_ok:
        texts = [base.answers[r].answer or "" for r in both_ok] + [cand.answers[r].answer or "" for r in both_ok]
        vecs = embed(texts)
        sims = {rid: cosine(vecs[i], vecs[len(both_ok) + i]) for i, rid in enumerate(both_ok)}
    summary = Compare(
        joined=len(both),
        both_ok=len(both_ok),
        chunk_overlap=summarize([co for co, _ in overlaps.values()]),
        document_overlap=summarize([do for _, do in overlaps.values()]),
        identical_answers=identical / len(both_ok) if both_ok else 0.0,
        answer_similarity=summarize(list(sims.values())) if sims else Summary(n=0),
    )
    per = {
        rid: PairScores(chunk_overlap=co, document_overlap=do, answer_similarity=sims.get(rid))
        for rid, (co, do) in overlaps.items()
    }
    return summary, per


def provenance_summary(answers: Iterable[Answer]) -> list[ProvenanceCount]:
    """The distinct provenances of a run's answers with how many answers each produced (most first).

    ``run_id`` is left out of the comparison key (it is the same for the whole run); answers without
    provenance are counted under ``{"recorded": false}``.
    """
    c: Counter[str] = Counter()
    for a in answers:
        if a.provenance is None:
            c[json.dumps({"recorded": False})] += 1
        else:
            c[json.dumps(a.provenance.model_dump(mode="json", exclude={"run_id"}), sort_keys=True)] += 1
    return [ProvenanceCount(answers=n, provenance=json.loads(k)) for k, n in c.most_common()]


def citation_stats(answers: Iterable[Answer]) -> AnswerCitations:
    """How the ``ok`` answers cite their passages: the share citing any, the mean groundedness reported."""
    ok = [a for a in answers if a.status == "ok"]
    grounded = [a.groundedness for a in ok if a.groundedness is not None]
    return AnswerCitations(
        answers=len(ok),
        cited_share=sum(any(s.cited for s in a.sources) for a in ok) / len(ok) if ok else None,
        groundedness_mean=sum(grounded) / len(grounded) if grounded else None,
    )


def run_section(run: RunData, ids: Sequence[uuid.UUID], labels: Mapping[str, frozenset[str]] | None) -> RunSection:
    """Per-run metrics of the report over the evaluation set ``ids``."""
    answers = [run.answers[r] for r in ids if r in run.answers]
    counts = status_counts(ids, run.answers)
    run_ids = sorted(
        {a.provenance.run_id for a in answers if a.provenance is not None and a.provenance.run_id is not None}
    )
    return RunSection(
        label=run.label,
        source=run.source,
        replay_runs=run_ids,
        replayed=sum(1 for r in ids if r in run.replayed),
        counts=counts,
        duplicates=run.duplicates,
        undecodable=run.undecodable,
        rates=rates(counts),
        latency_ms=latency_stats(answers),
        tokens=token_stats(answers),
        retrieval=retrieval_metrics(ids, run.queries, run.answers, labels) if labels else Retrieval(labelled=0),
        citations=citation_stats(answers),
        provenance=provenance_summary(answers),
    )


def not_comparable_stages(base: RunData, cand: RunData, stages: Iterable[str]) -> list[str]:
    """The latency stages of ``stages`` that include queue time (:data:`QUEUE_STAGES`) when either run read
    replayed requests: how and when a replay delivered them (a burst, before the shadow workers were up)
    shows there, not the change under evaluation. Empty when neither run was replayed."""
    if not base.replayed and not cand.replayed:
        return []
    return [s for s in ordered_stages(stages) if s in QUEUE_STAGES]
