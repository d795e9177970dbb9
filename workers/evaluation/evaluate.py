"""Compare two runs of the pipeline on the same requests: ``ragstream evaluate``.

A *run* is a set of answers to requests, read from one of these sources (:func:`parse_source`):

* ``live``: the live topics (``RAG_TOPICS__PREFIX`` + ``rag.requests`` / ``rag.responses``);
* ``run:NAME``: the topics of a shadow run, ``rag.eval.NAME.rag.requests`` / ``rag.eval.NAME.rag.responses``
  (``ragstream replay --run NAME`` + ``ragstream shadow --run NAME``);
* ``topics:PREFIX``: the topics under any prefix;
* ``table:NAME``: a monitor trace table in PostgreSQL (``RAG_DATABASE_URL``). The trace table does not hold
  provenance, so the report shows none for such a run.

Topics are read without a consumer group (partitions *assigned* from the low to the high watermark captured
at the start, nothing committed), so evaluating never moves a live group's offsets.

The requests compared are those of the *candidate* run (the replayed ones); the baseline's answers to the
same request ids are joined to them. The report (:func:`build_report`) holds, per run, counts and rates by
status, latency percentiles per stage (ms, from ``Response.timings_ms``, over answers with status ``ok``),
tokens per answer and, with a labels file, hit@1, hit@5 and MRR of the sources; between runs, answer
similarity (cosine of all-MiniLM-L6-v2 embeddings), and the Jaccard overlap of retrieved chunk ids and
document ids. Gates (:func:`parse_gate`) turn a regression into a failed evaluation (exit status 1).

Replayed requests keep their original ``created_at``; stages timed from it (``retriever_queue_ms``,
``end_to_end_ms``) are therefore re-based, for requests that carry the ``replay_run`` header, to the time
the replayed record was written to the shadow requests topic (its Kafka timestamp).

The metric functions are pure (no Kafka, no database, no model) and unit-tested; reading the sources and the
embedding model are passed in by :func:`evaluate`.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from workers.contracts.errors import ConfigError, MessageError
from workers.contracts.messages import Provenance, Request, Response
from workers.contracts.serde import decode
from workers.kafka.reader import TopicRecord, read_topic
from workers.settings import Settings

log = logging.getLogger(__name__)

#: Schema id written into the JSON report.
REPORT_SCHEMA = "ragstream.evaluation/1"
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
    "end_to_end_ms",
)
#: Stages timed from ``Request.created_at``: re-based for replayed requests (see the module docstring).
REBASED_STAGES = ("retriever_queue_ms", "end_to_end_ms")
#: Statuses counted as errors (``expired`` and unanswered requests are counted apart).
ERROR_STATUSES = ("error", "model_unavailable", "dead_letter")
#: Status of a request of the evaluation set that has no answer in the run.
MISSING = "missing"
#: Cut-offs reported as hit@k.
HIT_KS = (1, 5)
#: Short names accepted in gates for the full metric paths.
GATE_ALIASES = {
    "mrr": "retrieval.mrr",
    "error_rate": "rates.error",
    "expiry_rate": "rates.expired",
    "missing_rate": "rates.missing",
    "ok_rate": "rates.ok",
}
BASE_COLOR = "#4c78a8"
CAND_COLOR = "#f58518"
NEUTRAL_COLOR = "#54a24b"

_TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class SourceRef:
    """A retrieved passage an answer was generated from (rank = position in ``sources``, 0 = best)."""

    document_id: str
    chunk_id: str
    score: float = 0.0


@dataclass(frozen=True)
class Answer:
    """One run's answer to one request id, in the form the metrics need.

    Attributes:
        request_id: the request id.
        status: ``ok``, ``error``, ``expired``, ``model_unavailable`` or ``dead_letter``.
        answer: the answer text (``None`` unless ``ok``).
        sources: retrieved passages in rank order.
        timings_ms: per-stage times (ms), re-based for replayed requests.
        prompt_tokens: prompt tokens of the LLM tokenizer.
        completion_tokens: generated tokens.
        error_class: error class when the request failed.
        provenance: what produced the answer (``None`` when the source does not record it).
    """

    request_id: uuid.UUID
    status: str
    answer: str | None = None
    sources: tuple[SourceRef, ...] = ()
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error_class: str | None = None
    provenance: Provenance | None = None


@dataclass
class RunData:
    """The requests and answers of one run.

    Attributes:
        label: ``baseline`` or ``candidate``.
        source: where they were read (``topics:rag.eval.r1.``, ``table:rag_traces``).
        queries: request id → query text of the requests seen (empty when the source has no requests).
        answers: request id → first answer seen.
        duplicates: answers seen again for an already answered request id (redeliveries).
        undecodable: records that were not valid messages (skipped).
    """

    label: str
    source: str
    queries: dict[uuid.UUID, str] = field(default_factory=dict)
    answers: dict[uuid.UUID, Answer] = field(default_factory=dict)
    duplicates: int = 0
    undecodable: int = 0


@dataclass(frozen=True)
class RunSource:
    """Where a run is read from: topics under a prefix (``kind="topics"``) or a trace table (``"table"``)."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


def parse_source(spec: str, live_prefix: str = "", shadow_template: str = "rag.eval.{run}.") -> RunSource:
    """Parse a run source: ``live``, ``run:NAME``, ``topics:PREFIX`` or ``table:NAME``.

    Args:
        spec: the user's spec.
        live_prefix: the live topic prefix (``RAG_TOPICS__PREFIX``), used for ``live``.
        shadow_template: shadow prefix template of ``run:NAME`` (``{run}`` is replaced).

    Raises:
        ConfigError: an unknown form, or a bad run or table name.
    """
    s = spec.strip()
    if s == "live":
        return RunSource("topics", live_prefix)
    kind, sep, name = s.partition(":")
    if not sep:
        raise ConfigError(f"bad run source {spec!r}: use live, run:NAME, topics:PREFIX or table:NAME")
    if kind == "run":
        if not name or not re.match(r"^[A-Za-z0-9._-]+$", name):
            raise ConfigError(f"bad run name {name!r}: use letters, digits, '.', '_' and '-'")
        return RunSource("topics", shadow_template.replace("{run}", name))
    if kind == "topics":
        if name and not re.match(r"^[A-Za-z0-9._-]+$", name):
            raise ConfigError(f"bad topic prefix {name!r}")
        return RunSource("topics", name)
    if kind == "table":
        if not _TABLE_RE.match(name):
            raise ConfigError(f"bad trace table name {name!r}: use letters, digits and '_'")
        return RunSource("table", name)
    raise ConfigError(f"bad run source {spec!r}: use live, run:NAME, topics:PREFIX or table:NAME")


def load_labels(path: Path) -> dict[str, frozenset[str]]:
    """Read a labelled questions file: one JSON object per line, ``{"q": ..., "topics": [...]}``.

    Returns:
        normalized query text (:func:`normalize_query`) → the document ids whose text answers it.

    Raises:
        ConfigError: the file cannot be read or a line is not such an object.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read labels file {path}: {exc}") from exc
    out: dict[str, frozenset[str]] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            q, topics = obj["q"], obj["topics"]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f'{path}:{n}: expected {{"q": ..., "topics": [...]}}') from None
        if not isinstance(q, str) or not isinstance(topics, list):
            raise ConfigError(f"{path}:{n}: 'q' must be a string and 'topics' a list")
        out[normalize_query(q)] = frozenset(str(t) for t in topics)
    return out


def normalize_query(text: str) -> str:
    """Query text as matched against labels: whitespace collapsed, case folded."""
    return " ".join(text.split()).casefold()


# --------------------------------------------------------------------------- pure metrics


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


def summarize(values: Sequence[float]) -> dict[str, float]:
    """``n``, ``mean``, ``min``, ``p50``, ``p90``, ``p99`` and ``max`` of values (empty: ``{"n": 0}``)."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "mean": sum(values) / len(values),
        "min": min(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
    }


def rebase_timings(timings_ms: Mapping[str, float], shift_ms: float) -> dict[str, float]:
    """Subtract ``shift_ms`` from the stages timed from ``Request.created_at`` (clamped at 0 ms).

    Args:
        timings_ms: per-stage times (ms).
        shift_ms: time between the request's ``created_at`` and its entry into this run's requests topic (ms).
    """
    out = dict(timings_ms)
    if shift_ms > 0:
        for k in REBASED_STAGES:
            if k in out:
                out[k] = max(0.0, out[k] - shift_ms)
    return out


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
    out.update(c)
    return out


def rates(counts: Mapping[str, int]) -> dict[str, float]:
    """Fractions of the requests (0–1): ``ok``, ``error`` (error, model_unavailable, dead letter),
    ``expired`` and ``missing``."""
    n = counts.get("total", 0)
    if n == 0:
        return {"ok": 0.0, "error": 0.0, "expired": 0.0, "missing": 0.0}
    return {
        "ok": counts.get("ok", 0) / n,
        "error": sum(counts.get(s, 0) for s in ERROR_STATUSES) / n,
        "expired": counts.get("expired", 0) / n,
        "missing": counts.get(MISSING, 0) / n,
    }


def latency_stats(answers: Iterable[Answer]) -> dict[str, dict[str, float]]:
    """Per-stage latency summary (ms) over answers with status ``ok``, stages in pipeline order."""
    per: dict[str, list[float]] = {}
    for a in answers:
        if a.status != "ok":
            continue
        for k, v in a.timings_ms.items():
            if isinstance(v, int | float) and math.isfinite(v):
                per.setdefault(k, []).append(float(v))
    return {k: summarize(per[k]) for k in ordered_stages(per)}


def token_stats(answers: Iterable[Answer]) -> dict[str, dict[str, float]]:
    """Prompt and completion tokens per ``ok`` answer (mean, percentiles) and their totals."""
    ok = [a for a in answers if a.status == "ok"]
    out: dict[str, dict[str, float]] = {}
    for name, vals in (
        ("prompt", [float(a.prompt_tokens) for a in ok]),
        ("completion", [float(a.completion_tokens) for a in ok]),
    ):
        s = summarize(vals)
        s["total"] = float(sum(vals))
        out[name] = s
    return out


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
    ks: Sequence[int] = HIT_KS,
) -> dict[str, float]:
    """hit@k and MRR of the sources over the labelled requests (matched by query text).

    A request without an answer, or answered without sources, counts as a miss (rank 0 in the MRR).

    Returns:
        ``{"hit@1": ..., "hit@5": ..., "mrr": ..., "labelled": n}``; without labelled requests only
        ``{"labelled": 0}``.
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
    if n == 0:
        return {"labelled": 0}
    out: dict[str, float] = {f"hit@{k}": sum(1 for r in ranks if r is not None and r <= k) / n for k in ks}
    out["mrr"] = sum(1.0 / r for r in ranks if r is not None) / n
    out["labelled"] = n
    return out


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    """|A ∩ B| / |A ∪ B| of two sets (1.0 when both are empty)."""
    sa, sb = set(a), set(b)
    if not sa and not sb:
        return 1.0
    return len(sa & sb) / len(sa | sb)


def cosine(u: Sequence[float], v: Sequence[float]) -> float:
    """Cosine similarity of two vectors (0.0 when either has norm 0)."""
    dot = sum(x * y for x, y in zip(u, v, strict=True))
    nu = math.sqrt(sum(x * x for x in u))
    nv = math.sqrt(sum(y * y for y in v))
    return dot / (nu * nv) if nu > 0 and nv > 0 else 0.0


Embed = Callable[[list[str]], Sequence[Sequence[float]]]


def compare_runs(
    ids: Sequence[uuid.UUID],
    base: RunData,
    cand: RunData,
    embed: Embed | None = None,
) -> tuple[dict[str, Any], dict[uuid.UUID, dict[str, float]]]:
    """Between-runs metrics over the requests both runs answered ``ok``.

    Args:
        ids: the evaluation set.
        base: the baseline run.
        cand: the candidate run.
        embed: texts → vectors (any length, same model for all); ``None`` skips answer similarity.

    Returns:
        The summary (``joined``, ``both_ok``, ``answer_similarity``, ``identical_answers``,
        ``chunk_jaccard``, ``document_jaccard``, each a :func:`summarize` dict) and per-request values.
    """
    both = [rid for rid in ids if rid in base.answers and rid in cand.answers]
    both_ok = [rid for rid in both if base.answers[rid].status == "ok" and cand.answers[rid].status == "ok"]
    per: dict[uuid.UUID, dict[str, float]] = {rid: {} for rid in both_ok}
    chunk_j: list[float] = []
    doc_j: list[float] = []
    identical = 0
    for rid in both_ok:
        a, b = base.answers[rid], cand.answers[rid]
        cj = jaccard((s.chunk_id for s in a.sources), (s.chunk_id for s in b.sources))
        dj = jaccard((s.document_id for s in a.sources), (s.document_id for s in b.sources))
        per[rid].update(chunk_jaccard=cj, document_jaccard=dj)
        chunk_j.append(cj)
        doc_j.append(dj)
        identical += int((a.answer or "").strip() == (b.answer or "").strip())
    out: dict[str, Any] = {
        "joined": len(both),
        "both_ok": len(both_ok),
        "chunk_jaccard": summarize(chunk_j),
        "document_jaccard": summarize(doc_j),
        "identical_answers": identical / len(both_ok) if both_ok else 0.0,
    }
    if embed is not None and both_ok:
        texts = [base.answers[r].answer or "" for r in both_ok] + [cand.answers[r].answer or "" for r in both_ok]
        vecs = embed(texts)
        sims: list[float] = []
        for i, rid in enumerate(both_ok):
            sim = cosine(vecs[i], vecs[len(both_ok) + i])
            per[rid]["answer_similarity"] = sim
            sims.append(sim)
        out["answer_similarity"] = summarize(sims)
    else:
        out["answer_similarity"] = {"n": 0}
    return out, per


def provenance_summary(answers: Iterable[Answer]) -> list[dict[str, Any]]:
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
    return [{"answers": n, "provenance": json.loads(k)} for k, n in c.most_common()]


def run_section(run: RunData, ids: Sequence[uuid.UUID], labels: Mapping[str, frozenset[str]] | None) -> dict[str, Any]:
    """Per-run metrics of the report over the evaluation set ``ids``."""
    answers = [run.answers[r] for r in ids if r in run.answers]
    counts = status_counts(ids, run.answers)
    run_ids = sorted(
        {a.provenance.run_id for a in answers if a.provenance is not None and a.provenance.run_id is not None}
    )
    return {
        "label": run.label,
        "source": run.source,
        "replay_runs": run_ids,
        "counts": counts,
        "duplicates": run.duplicates,
        "undecodable": run.undecodable,
        "rates": rates(counts),
        "latency_ms": latency_stats(answers),
        "tokens": token_stats(answers),
        "retrieval": retrieval_metrics(ids, run.queries, run.answers, labels) if labels else {"labelled": 0},
        "provenance": provenance_summary(answers),
    }


def evaluation_ids(base: RunData, cand: RunData) -> list[uuid.UUID]:
    """The requests compared: the candidate's requests (else its answers), in a stable order.

    Order: the baseline's query order is not known, so ids are sorted by query text, then id.
    """
    ids = set(cand.queries) or set(cand.answers)
    queries = {**base.queries, **cand.queries}
    return sorted(ids, key=lambda r: (queries.get(r, ""), str(r)))


# --------------------------------------------------------------------------- gates


@dataclass(frozen=True)
class Gate:
    """A release gate on one metric.

    Relative (``kind="relative"``), ``PATH:-X``, ``PATH:-X%``, ``PATH:+X``, ``PATH:+X%``: the sign names the
    bad direction and the number what is allowed in that direction, absolute or as a percentage of the
    baseline. ``hit@5:-0.05`` fails when the candidate's hit@5 is below the baseline's minus 0.05;
    ``latency_ms.end_to_end_ms.p50:+20%`` fails when the candidate's p50 is above 1.2 × the baseline's.

    Absolute (``kind="min"`` / ``"max"``), ``PATH>=X`` / ``PATH<=X``: a bound on the candidate's value, or
    on a between-runs metric when PATH starts with ``compare.`` (``compare.answer_similarity.mean>=0.8``).

    Attributes:
        spec: the text given.
        path: dotted metric path in a run section (``retrieval.hit@5``) or ``compare.…``.
        kind: ``relative``, ``min`` or ``max``.
        direction: ``-`` or ``+`` (relative gates).
        amount: allowed change, or the bound.
        percent: ``amount`` is a percentage of the baseline value.
    """

    spec: str
    path: str
    kind: str
    amount: float
    direction: str = ""
    percent: bool = False


_GATE_RE = re.compile(
    r"^\s*(?P<path>[A-Za-z0-9_.@-]+?)\s*"
    r"(?:(?P<op>>=|<=)\s*(?P<bound>[-+]?[0-9]*\.?[0-9]+)|:\s*(?P<sign>[-+])(?P<num>[0-9]*\.?[0-9]+)(?P<pct>%)?)\s*$"
)


def parse_gate(spec: str) -> Gate:
    """Parse a gate (see :class:`Gate`); ``hit@K``, ``mrr``, ``error_rate``, ``expiry_rate`` are short names.

    Raises:
        ConfigError: the spec does not match either form, or a relative gate names a ``compare.`` metric.
    """
    m = _GATE_RE.match(spec)
    if m is None:
        raise ConfigError(
            f"bad gate {spec!r}: use METRIC:-X, METRIC:+X% (change allowed against the baseline) or "
            "METRIC>=X, METRIC<=X (bound), e.g. hit@5:-0.05 or latency_ms.end_to_end_ms.p50:+20%"
        )
    path = m["path"]
    if path in GATE_ALIASES:
        path = GATE_ALIASES[path]
    elif re.fullmatch(r"hit@\d+", path):
        path = f"retrieval.{path}"
    elif path.startswith("latency."):
        path = "latency_ms." + path[len("latency.") :]
    if m["op"] is not None:
        return Gate(spec=spec, path=path, kind="min" if m["op"] == ">=" else "max", amount=float(m["bound"]))
    if path.startswith("compare."):
        raise ConfigError(f"bad gate {spec!r}: compare.* metrics take a bound (>= or <=), not a change")
    return Gate(
        spec=spec, path=path, kind="relative", direction=m["sign"], amount=float(m["num"]), percent=bool(m["pct"])
    )


def metric_value(section: Mapping[str, Any], path: str) -> float | None:
    """The number at a dotted path of a report section (``latency_ms.end_to_end_ms.p50``), or ``None``."""
    cur: Any = section
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    if isinstance(cur, bool) or not isinstance(cur, int | float):
        return None
    return float(cur)


def check_gate(
    gate: Gate, baseline: Mapping[str, Any], candidate: Mapping[str, Any], compare: Mapping[str, Any]
) -> dict[str, Any]:
    """Evaluate one gate against the report's sections.

    A metric that is missing from a section (no labels, no ``ok`` answer) fails the gate: a gate that cannot
    be checked must not let a release through.

    Returns:
        ``{"gate", "metric", "baseline", "candidate", "limit", "passed", "reason"}``.
    """
    if gate.path.startswith("compare."):
        base_v = None
        cand_v = metric_value(compare, gate.path[len("compare.") :])
    else:
        base_v = metric_value(baseline, gate.path)
        cand_v = metric_value(candidate, gate.path)
    res: dict[str, Any] = {
        "gate": gate.spec,
        "metric": gate.path,
        "baseline": base_v,
        "candidate": cand_v,
        "limit": None,
        "passed": False,
        "reason": "",
    }
    if cand_v is None or (gate.kind == "relative" and base_v is None):
        res["reason"] = "metric not available"
        return res
    if gate.kind == "min":
        res["limit"] = gate.amount
        res["passed"] = cand_v >= gate.amount
        res["reason"] = f"{cand_v:.4g} {'>=' if res['passed'] else '<'} {gate.amount:.4g}"
        return res
    if gate.kind == "max":
        res["limit"] = gate.amount
        res["passed"] = cand_v <= gate.amount
        res["reason"] = f"{cand_v:.4g} {'<=' if res['passed'] else '>'} {gate.amount:.4g}"
        return res
    assert base_v is not None
    allowed = abs(base_v) * gate.amount / 100.0 if gate.percent else gate.amount
    if gate.direction == "-":
        limit = base_v - allowed
        res["passed"] = cand_v >= limit
        rel = "above" if res["passed"] else "below"
    else:
        limit = base_v + allowed
        res["passed"] = cand_v <= limit
        rel = "below" if res["passed"] else "above"
    res["limit"] = limit
    res["reason"] = f"candidate {cand_v:.4g} {rel} limit {limit:.4g} (baseline {base_v:.4g})"
    return res


# --------------------------------------------------------------------------- report


def build_report(
    base: RunData,
    cand: RunData,
    *,
    labels: Mapping[str, frozenset[str]] | None = None,
    embed: Embed | None = None,
    gates: Sequence[Gate] = (),
    labels_path: str | None = None,
) -> dict[str, Any]:
    """The evaluation report as a JSON-ready dict (see the module docstring for its content).

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
    results = [check_gate(g, baseline, candidate, compare) for g in gates]
    queries = {**base.queries, **cand.queries}
    requests = []
    for rid in ids:
        row: dict[str, Any] = {"request_id": str(rid), "query": queries.get(rid)}
        relevant = labels.get(normalize_query(queries.get(rid) or "")) if labels else None
        for key, run in (("baseline", base), ("candidate", cand)):
            a = run.answers.get(rid)
            row[key] = {
                "status": a.status if a is not None else MISSING,
                "end_to_end_ms": a.timings_ms.get("end_to_end_ms") if a is not None else None,
                "documents": [s.document_id for s in a.sources] if a is not None else [],
                "first_hit_rank": first_hit_rank(a.sources, relevant) if a is not None and relevant else None,
                "completion_tokens": a.completion_tokens if a is not None else 0,
            }
        row.update(per.get(rid, {}))
        requests.append(row)
    return {
        "schema": REPORT_SCHEMA,
        "generated_at": datetime.now(UTC).isoformat(),
        "labels": labels_path,
        "requests_compared": len(ids),
        "baseline": baseline,
        "candidate": candidate,
        "compare": compare,
        "gates": results,
        "passed": all(r["passed"] for r in results),
        "requests": requests,
    }


# --------------------------------------------------------------------------- HTML (inline SVG, no network)


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


def svg_latency(baseline: Mapping[str, Any], candidate: Mapping[str, Any], width: int = 920) -> str:
    """Horizontal bars per stage and run on a log axis (ms): bar to p50, light bar to p90, tick at p99."""
    stages = ordered_stages(set(baseline) | set(candidate))
    if not stages:
        return "<p>No latencies (no answer with status ok).</p>"
    vals = [
        v
        for sec in (baseline, candidate)
        for s in stages
        for k in ("p50", "p90", "p99")
        if (v := sec.get(s, {}).get(k)) is not None
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
            if not st or not st.get("n"):
                continue
            yb = y0 + 3 + j * 12
            x0, x50, x90, x99 = x(lo), x(st["p50"]), x(st["p90"]), x(st["p99"])
            body.append(f'<rect x="{x0:.1f}" y="{yb}" width="{max(1.0, x50 - x0):.1f}" height="10" fill="{color}"/>')
            body.append(
                f'<rect x="{x50:.1f}" y="{yb}" width="{max(0.0, x90 - x50):.1f}" height="10" fill="{color}" '
                'fill-opacity="0.35"/>'
            )
            body.append(
                f'<line x1="{x99:.1f}" y1="{yb - 1}" x2="{x99:.1f}" y2="{yb + 11}" stroke="{color}" stroke-width="2"/>'
            )
            body.append(f'<text x="{x99 + 5:.1f}" y="{yb + 9}" fill="#333">{_fmt(st["p50"])}</text>')
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


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG; nothing is fetched)."""
    b, c, cmp_ = report["baseline"], report["candidate"], report["compare"]
    parts: list[str] = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>ragstream evaluation</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>ragstream evaluation</h1>",
        f"<div class='meta'>generated {_e(report['generated_at'])} · {report['requests_compared']} requests · "
        f"<span class='b'>baseline</span> {_e(b['source'])} · <span class='c'>candidate</span> {_e(c['source'])}"
        + (f" · labels {_e(report['labels'])}" if report.get("labels") else "")
        + "</div>",
    ]
    gates = report.get("gates", [])
    if gates:
        ok = report["passed"]
        n_fail = sum(1 for g in gates if not g["passed"])
        parts.append(
            f"<div class='banner {'pass' if ok else 'fail'}'>"
            + (f"PASS: all {len(gates)} gates hold" if ok else f"FAIL: {n_fail} of {len(gates)} gates regressed")
            + "</div><table><tr><th class='l'>gate</th><th>baseline</th><th>candidate</th><th>limit</th>"
            "<th class='l'>result</th></tr>"
        )
        for g in gates:
            cls = "ok" if g["passed"] else "bad"
            parts.append(
                f"<tr><td class='l'>{_e(g['gate'])}</td><td>{_fmt(g['baseline'], 3)}</td>"
                f"<td>{_fmt(g['candidate'], 3)}</td><td>{_fmt(g['limit'], 3)}</td>"
                f"<td class='l {cls}'>{'pass' if g['passed'] else 'FAIL'}: {_e(g['reason'])}</td></tr>"
            )
        parts.append("</table>")

    # summary table
    parts.append(
        "<h2>Summary</h2><table><tr><th class='l'>metric</th><th>baseline</th><th>candidate</th><th>Δ</th></tr>"
    )
    for k in ("total", "ok", "error", "model_unavailable", "dead_letter", "expired", MISSING):
        parts.append(_cmp_row(f"requests {k}", b["counts"].get(k), c["counts"].get(k), 0))
    for k in ("ok", "error", "expired", "missing"):
        parts.append(_cmp_row(f"rate {k}", b["rates"][k], c["rates"][k]))
    for k in ("hit@1", "hit@5", "mrr"):
        if k in b["retrieval"] or k in c["retrieval"]:
            parts.append(_cmp_row(k, b["retrieval"].get(k), c["retrieval"].get(k)))
    for stage in ("end_to_end_ms", "llm_total_ms"):
        for p in ("p50", "p90", "p99"):
            parts.append(
                _cmp_row(
                    f"{stage} {p}", b["latency_ms"].get(stage, {}).get(p), c["latency_ms"].get(stage, {}).get(p), 1
                )
            )
    for t in ("prompt", "completion"):
        parts.append(_cmp_row(f"{t} tokens mean", b["tokens"][t].get("mean"), c["tokens"][t].get("mean"), 1))
    sim = cmp_["answer_similarity"]
    parts.append("</table><table><tr><th class='l'>between runs</th><th>value</th></tr>")
    parts.append(
        f"<tr><td class='l'>answered ok by both</td><td>{cmp_['both_ok']} of {cmp_['joined']} joined</td></tr>"
    )
    parts.append(
        f"<tr><td class='l'>answer similarity (cosine) mean / p50 / min</td><td>{_fmt(sim.get('mean'), 3)} / "
        f"{_fmt(sim.get('p50'), 3)} / {_fmt(sim.get('min'), 3)}</td></tr>"
    )
    parts.append(f"<tr><td class='l'>identical answers</td><td>{_fmt(cmp_['identical_answers'], 3)}</td></tr>")
    for k, name in (("chunk_jaccard", "chunk ids"), ("document_jaccard", "document ids")):
        parts.append(
            f"<tr><td class='l'>Jaccard of retrieved {name} (mean)</td><td>{_fmt(cmp_[k].get('mean'), 3)}</td></tr>"
        )
    parts.append("</table>")

    # plots
    parts.append("<h2>Latency per stage</h2>")
    parts.append(svg_latency(b["latency_ms"], c["latency_ms"]))
    e2e = [
        (
            label,
            color,
            [
                r[label]["end_to_end_ms"]
                for r in report["requests"]
                if r[label]["status"] == "ok" and r[label]["end_to_end_ms"] is not None
            ],
        )
        for label, color in (("baseline", BASE_COLOR), ("candidate", CAND_COLOR))
    ]
    parts.append("<h2>Quality, tokens and end-to-end latency</h2><div class='grid'>")
    if b["retrieval"].get("labelled") or c["retrieval"].get("labelled"):
        ks = ["hit@1", "hit@5", "mrr"]
        parts.append(
            svg_grouped_bars(
                ks,
                [
                    ("baseline", BASE_COLOR, [b["retrieval"].get(k) for k in ks]),
                    ("candidate", CAND_COLOR, [c["retrieval"].get(k) for k in ks]),
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
                ("baseline", BASE_COLOR, [b["tokens"][t].get("mean") for t in ("prompt", "completion")]),
                ("candidate", CAND_COLOR, [c["tokens"][t].get("mean") for t in ("prompt", "completion")]),
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
                ("baseline", BASE_COLOR, [b["counts"].get(s, 0) for s in statuses]),
                ("candidate", CAND_COLOR, [c["counts"].get(s, 0) for s in statuses]),
            ],
            "requests by status (error includes model_unavailable, dead letters)",
            digits=0,
        )
    )
    parts.append("</div><h2>Between runs</h2><div class='grid'>")
    sims = [r["answer_similarity"] for r in report["requests"] if "answer_similarity" in r]
    cj = [r["chunk_jaccard"] for r in report["requests"] if "chunk_jaccard" in r]
    parts.append(svg_histogram(sims, "answer similarity (cosine, all-MiniLM-L6-v2)"))
    parts.append(svg_histogram(cj, "Jaccard of retrieved chunk ids"))
    parts.append("</div>")

    # provenance
    parts.append("<h2>Provenance</h2>")
    pb = b["provenance"][0]["provenance"] if b["provenance"] else {}
    pc = c["provenance"][0]["provenance"] if c["provenance"] else {}
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
        if len(sec["provenance"]) > 1:
            parts.append(
                f"<p class='bad'>{_e(sec['label'])}: answers come from {len(sec['provenance'])} different "
                "configurations (see the JSON report).</p>"
            )

    # per request
    parts.append(
        "<h2>Requests</h2><table><tr><th class='l'>query</th><th>base status</th><th>cand status</th>"
        "<th>base e2e ms</th><th>cand e2e ms</th><th>base hit rank</th><th>cand hit rank</th>"
        "<th>similarity</th><th>chunk J</th></tr>"
    )
    for r in report["requests"]:
        rb, rc = r["baseline"], r["candidate"]
        parts.append(
            f"<tr><td class='l q' title='{_e(r['request_id'])}'>{_e(r['query'] or r['request_id'])}</td>"
            f"<td>{_e(rb['status'])}</td><td>{_e(rc['status'])}</td>"
            f"<td>{_fmt(rb['end_to_end_ms'], 0)}</td><td>{_fmt(rc['end_to_end_ms'], 0)}</td>"
            f"<td>{_e(rb['first_hit_rank'] or '–')}</td><td>{_e(rc['first_hit_rank'] or '–')}</td>"
            f"<td>{_fmt(r.get('answer_similarity'), 3)}</td><td>{_fmt(r.get('chunk_jaccard'), 2)}</td></tr>"
        )
    parts.append("</table></body></html>")
    return "".join(parts)


def write_report(report: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``out_dir`` (created if missing).

    Returns:
        The paths of the JSON and the HTML file.

    Raises:
        ConfigError: the folder cannot be written.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        jp, hp = out_dir / "report.json", out_dir / "report.html"
        jp.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
        hp.write_text(render_html(report), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the report into {out_dir}: {exc}") from exc
    return jp, hp


# --------------------------------------------------------------------------- reading runs


def run_from_records(
    label: str, source: str, requests: Iterable[TopicRecord], responses: Iterable[TopicRecord]
) -> RunData:
    """Build a run from the records of its requests and responses topics (pure; see :func:`read_topic`).

    Replayed requests (header ``replay_run``) get their ``created_at``-based stages re-based to the Kafka
    timestamp of the replayed record.
    """
    run = RunData(label=label, source=source)
    shift: dict[uuid.UUID, float] = {}
    for rec in requests:
        try:
            req = decode(rec.value, Request)
        except MessageError:
            run.undecodable += 1
            continue
        run.queries.setdefault(req.request_id, req.query)
        if rec.headers.get("replay_run") and rec.timestamp_ms is not None:
            shift[req.request_id] = rec.timestamp_ms - req.created_at.timestamp() * 1000.0
    for rec in responses:
        try:
            resp = decode(rec.value, Response)
        except MessageError:
            run.undecodable += 1
            continue
        if resp.request_id in run.answers:
            run.duplicates += 1
            continue
        run.answers[resp.request_id] = answer_from_response(resp, shift.get(resp.request_id, 0.0))
    return run


def answer_from_response(resp: Response, shift_ms: float = 0.0) -> Answer:
    """An :class:`Answer` from a wire Response (timings re-based by ``shift_ms``, see :func:`rebase_timings`)."""
    return Answer(
        request_id=resp.request_id,
        status=resp.status,
        answer=resp.answer,
        sources=tuple(SourceRef(s.document_id, s.chunk_id, s.score) for s in resp.sources),
        timings_ms=rebase_timings(resp.timings_ms, shift_ms),
        prompt_tokens=resp.usage.prompt_tokens,
        completion_tokens=resp.usage.completion_tokens,
        error_class=resp.error.error_class if resp.error is not None else None,
        provenance=resp.provenance,
    )


def answer_from_trace_row(row: Mapping[str, Any]) -> Answer | None:
    """An :class:`Answer` from a monitor trace row (``None`` when the request has no answer yet)."""
    status = row.get("response_status")
    if status is None:
        if row.get("status") != "dead_letter":
            return None
        status = "dead_letter"
    sources = tuple(
        SourceRef(str(s.get("document_id", "")), str(s.get("chunk_id", "")), float(s.get("score") or 0.0))
        for s in (row.get("sources") or [])
        if isinstance(s, Mapping)
    )
    rid = row["request_id"]
    return Answer(
        request_id=rid if isinstance(rid, uuid.UUID) else uuid.UUID(str(rid)),
        status=str(status),
        answer=row.get("answer"),
        sources=sources,
        timings_ms={k: float(v) for k, v in (row.get("timings_ms") or {}).items() if isinstance(v, int | float)},
        prompt_tokens=int(row.get("usage_prompt_tokens") or 0),
        completion_tokens=int(row.get("usage_completion_tokens") or 0),
        error_class=row.get("error_class"),
        provenance=None,
    )


def read_trace_table(database_url: str, table: str, label: str, ids: Iterable[uuid.UUID] | None = None) -> RunData:
    """A run from a monitor trace table (one row per request id).

    Args:
        database_url: PostgreSQL URL.
        table: the trace table (``rag_traces``, ``rag_traces_eval_<run>``).
        label: ``baseline`` or ``candidate``.
        ids: only these request ids (``None`` = every row).

    Raises:
        ConfigError: bad table name, or the table does not exist.
        ServiceUnavailableError: the database cannot be reached.
    """
    import psycopg
    from psycopg import sql
    from psycopg.rows import dict_row

    from workers.contracts.errors import ServiceUnavailableError

    if not _TABLE_RE.match(table):
        raise ConfigError(f"bad trace table name {table!r}")
    cols = (
        "request_id, query, status, response_status, answer, sources, timings_ms, usage_prompt_tokens, "
        "usage_completion_tokens, error_class"
    )
    query = sql.SQL("SELECT " + cols + " FROM {t}").format(t=sql.Identifier(table))
    params: tuple[Any, ...] = ()
    if ids is not None:
        query = query + sql.SQL(" WHERE request_id = ANY(%s)")
        params = (list(ids),)
    run = RunData(label=label, source=f"table:{table}")
    try:
        with psycopg.connect(database_url, connect_timeout=10) as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query, params)
            rows = cur.fetchall()
    except psycopg.errors.UndefinedTable:
        raise ConfigError(f"trace table {table!r} does not exist") from None
    except psycopg.OperationalError as exc:
        raise ServiceUnavailableError(f"PostgreSQL not reachable: {str(exc).splitlines()[0]}") from None
    for row in rows:
        rid = row["request_id"]
        if row.get("query") is not None:
            run.queries[rid] = row["query"]
        a = answer_from_trace_row(row)
        if a is not None:
            run.answers[rid] = a
    log.info("read trace table=%s rows=%d answers=%d", table, len(rows), len(run.answers))
    return run


def load_run(
    settings: Settings,
    source: RunSource,
    label: str,
    *,
    ids: Iterable[uuid.UUID] | None = None,
    timeout_s: float = 120.0,
) -> RunData:
    """Read one run from topics (requests + responses under the prefix) or from a trace table.

    Args:
        settings: Kafka and database settings; topic base names.
        source: where (:func:`parse_source`).
        label: ``baseline`` or ``candidate``.
        ids: keep only these request ids (``None`` = all).
        timeout_s: seconds allowed to read each topic.

    Raises:
        ConfigError: a topic or the table does not exist.
        ServiceUnavailableError: the broker or the database cannot be reached.
    """
    if source.kind == "table":
        return read_trace_table(settings.database_url.get_secret_value(), source.name, label, ids)
    from workers.kafka.admin import check_broker

    check_broker(settings.kafka)
    topics = settings.topics.model_copy(update={"prefix": source.name})
    reqs = read_topic(settings.kafka, topics.name("requests"), timeout_s=timeout_s)
    resps = read_topic(settings.kafka, topics.name("responses"), timeout_s=timeout_s)
    run = run_from_records(label, str(source), reqs, resps)
    if ids is not None:
        keep = set(ids)
        run.queries = {k: v for k, v in run.queries.items() if k in keep}
        run.answers = {k: v for k, v in run.answers.items() if k in keep}
    return run


def evaluate(
    settings: Settings,
    baseline: RunSource,
    candidate: RunSource,
    *,
    labels_path: Path | None = None,
    gates: Sequence[Gate] = (),
    embed: Embed | None = None,
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Read both runs, compare them and check the gates; returns the report (:func:`build_report`).

    Args:
        settings: Kafka, database and topic settings.
        baseline: the run compared against (usually ``live`` or the live trace table).
        candidate: the shadow run.
        labels_path: labelled questions file (``{"q": ..., "topics": [...]}`` per line).
        gates: release gates.
        embed: texts → vectors for answer similarity (``None`` skips it).
        timeout_s: seconds allowed to read each topic.

    Raises:
        ConfigError: a source does not exist, the labels file is bad, or the candidate run has no requests.
        ServiceUnavailableError: the broker or the database cannot be reached.
    """
    labels = load_labels(labels_path) if labels_path is not None else None
    cand = load_run(settings, candidate, "candidate", timeout_s=timeout_s)
    ids = evaluation_ids(RunData("baseline", ""), cand)
    if not ids:
        raise ConfigError(f"the candidate run {candidate} has no requests or answers")
    base = load_run(settings, baseline, "baseline", ids=ids, timeout_s=timeout_s)
    log.info(
        "evaluate candidate=%s requests=%d answers=%d baseline=%s answers=%d",
        candidate,
        len(ids),
        len(cand.answers),
        baseline,
        len(base.answers),
    )
    return build_report(
        base, cand, labels=labels, embed=embed, gates=gates, labels_path=str(labels_path) if labels_path else None
    )
