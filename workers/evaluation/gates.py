"""Release gates of ``ragstream evaluate --fail-on``: a regression becomes a failed evaluation (exit status 1).

A gate (:func:`parse_gate`) names a metric by its dotted path in the JSON form of a report section
(``retrieval.hit@5``, ``latency_ms.processing_ms.p50``, ``rates.error``) or of the between-runs section
(``compare.answer_similarity.mean``), and either the change allowed against the baseline or a bound on the
candidate's value. Every form can be pasted into a shell unquoted: ``hit@5:-0.05``, ``latency.p50:+20%``,
``error_rate:max=0.01``, ``compare.answer_similarity.mean:min=0.8`` (the older ``METRIC<=X`` / ``METRIC>=X``
are still read, but only work quoted: unquoted, the shell takes ``<`` and ``>`` for redirections). A metric
that no report has fails at parsing, before anything is read, with the list of valid names
(:func:`metric_catalog`). :func:`check_gate` evaluates a gate against the report's sections.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from pydantic import BaseModel

from workers.contracts.errors import ConfigError
from workers.evaluation.analysis import HIT_KS, PROCESSING_STAGE, STAGE_ORDER
from workers.evaluation.models import GateResult
from workers.evaluation.numbers import human, percent_change

#: Short names accepted in gates for the full metric paths (``latency.pN`` is the processing latency).
GATE_ALIASES = {
    "mrr": "retrieval.mrr",
    "error_rate": "rates.error",
    "expiry_rate": "rates.expired",
    "missing_rate": "rates.missing",
    "ok_rate": "rates.ok",
    "no_context_rate": "rates.no_context",
    "cited_share": "citations.cited_share",
    "groundedness": "citations.groundedness_mean",
    **{f"hit@{k}": f"retrieval.hit@{k}" for k in HIT_KS},
    **{f"latency.{p}": f"latency_ms.{PROCESSING_STAGE}.{p}" for p in ("p50", "p90", "p99", "mean", "max")},
}

#: Statistics of a summary (latency, tokens, overlaps, similarity).
SUMMARY_STATS = ("n", "mean", "min", "p50", "p90", "p99", "max")
#: Every stage a report may hold latencies for (``processing_ms`` included).
LATENCY_STAGES = STAGE_ORDER

#: A report section: a model of :mod:`workers.evaluation.models`, or its JSON form.
Section: TypeAlias = BaseModel | Mapping[str, Any]


def metric_catalog() -> list[str]:
    """Every metric path a gate can name (run-section paths, then ``compare.*``), in a stable order."""
    out = [f"retrieval.hit@{k}" for k in HIT_KS] + ["retrieval.mrr", "retrieval.labelled"]
    out += [f"rates.{r}" for r in ("ok", "error", "expired", "missing")]
    out += [f"counts.{c}" for c in ("total", "ok", "error", "model_unavailable", "dead_letter", "expired", "missing")]
    out += [f"latency_ms.{s}.{st}" for s in LATENCY_STAGES for st in SUMMARY_STATS]
    out += [f"tokens.{t}.{st}" for t in ("prompt", "completion") for st in (*SUMMARY_STATS, "total")]
    out += ["citations.answers", "citations.cited_share", "citations.groundedness_mean"]
    out += ["duplicates", "undecodable"]
    out += ["compare.joined", "compare.both_ok", "compare.identical_answers"]
    out += [
        f"compare.{m}.{st}" for m in ("answer_similarity", "chunk_overlap", "document_overlap") for st in SUMMARY_STATS
    ]
    return out


_CATALOG = frozenset(metric_catalog())


def metric_help() -> str:
    """The valid metric names in a few lines, for error messages and ``evaluate --list-metrics``."""
    stages = ", ".join(LATENCY_STAGES)
    return (
        "short names: " + ", ".join(GATE_ALIASES) + "\n"
        f"latency_ms.<stage>.<stat> (or latency.<stage>.<stat>): stage one of {stages}; "
        f"stat one of {', '.join(SUMMARY_STATS)}\n"
        "retrieval.hit@1, retrieval.hit@5, retrieval.mrr, retrieval.labelled; rates.ok|error|expired|missing; "
        "counts.<status>; tokens.prompt|completion.<stat>|total; citations.answers|cited_share|groundedness_mean; "
        "duplicates; undecodable\n"
        "compare.answer_similarity|chunk_overlap|document_overlap.<stat>; compare.identical_answers; "
        "compare.joined; compare.both_ok"
    )


@dataclass(frozen=True)
class Gate:
    """A release gate on one metric.

    Relative (``kind="relative"``), ``PATH:-X``, ``PATH:-X%``, ``PATH:+X``, ``PATH:+X%``: the sign names the
    bad direction and the number what is allowed in that direction, absolute or as a percentage of the
    baseline. ``hit@5:-0.05`` fails when the candidate's hit@5 is below the baseline's minus 0.05;
    ``latency.p50:+20%`` fails when the candidate's processing p50 is above 1.2 × the baseline's.

    Absolute (``kind="min"`` / ``"max"``), ``PATH:min=X`` / ``PATH:max=X`` (or, quoted, ``PATH>=X`` /
    ``PATH<=X``): a bound on the candidate's value, or on a between-runs metric when PATH starts with
    ``compare.`` (``compare.answer_similarity.mean:min=0.8``).

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

    @property
    def stage(self) -> str | None:
        """The latency stage the gate is on (``end_to_end_ms``), ``None`` for other metrics."""
        parts = self.path.split(".")
        return parts[1] if parts[0] == "latency_ms" and len(parts) == 3 else None


_NUM = r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)"
_GATE_RE = re.compile(
    r"^\s*(?P<path>[A-Za-z0-9_.@-]+?)\s*(?:"
    rf":\s*(?P<bound>min|max)\s*=\s*(?P<bval>{_NUM})"
    rf"|(?P<op>>=|<=)\s*(?P<oval>{_NUM})"
    r"|:\s*(?P<sign>[-+])(?P<num>[0-9]+\.?[0-9]*|\.[0-9]+)(?P<pct>%)?"
    r")\s*$"
)
_FORMS = (
    "use METRIC:-X or METRIC:+X% (change allowed against the baseline) or METRIC:min=X / METRIC:max=X "
    "(bound on the candidate), e.g. hit@5:-0.05, latency.p50:+20%, error_rate:max=0.01"
)


def resolve_metric(name: str) -> str:
    """The full metric path of a gate's metric name (short names and ``latency.`` expanded).

    Raises:
        ConfigError: no report has such a metric; the message lists the valid names.
    """
    path = GATE_ALIASES.get(name, name)
    if path.startswith("latency."):
        path = "latency_ms." + path[len("latency.") :]
    if path not in _CATALOG:
        raise ConfigError(f"unknown metric {name!r} in a gate; valid names:\n{metric_help()}")
    return path


def parse_gate(spec: str) -> Gate:
    """Parse a gate (see :class:`Gate`) and check that its metric exists (:func:`resolve_metric`).

    Raises:
        ConfigError: the spec matches no form, names an unknown metric, or a relative gate names a
            ``compare.`` metric.
    """
    m = _GATE_RE.match(spec)
    if m is None:
        hint = ""
        if re.search(r"[<>]", spec) is None and re.search(r"[A-Za-z_@.]=\s*[-+.0-9]", spec):
            hint = " (a '<=' or '>=' typed unquoted in a shell loses its '<' or '>': the shell redirects)"
        raise ConfigError(f"bad gate {spec!r}{hint}: {_FORMS}")
    path = resolve_metric(m["path"])
    if m["bound"] is not None or m["op"] is not None:
        kind = (m["bound"] or ("min" if m["op"] == ">=" else "max")).lower()
        return Gate(spec=spec, path=path, kind=kind, amount=float(m["bval"] or m["oval"]))
    if path.startswith("compare."):
        raise ConfigError(f"bad gate {spec!r}: compare.* metrics take a bound (:min= or :max=), not a change")
    return Gate(
        spec=spec, path=path, kind="relative", direction=m["sign"], amount=float(m["num"]), percent=bool(m["pct"])
    )


def metric_value(section: Section, path: str) -> float | None:
    """The number at a dotted path of a report section (``latency_ms.end_to_end_ms.p50``), or ``None``.

    Args:
        section: a report model (its JSON form is searched, keys by alias) or that JSON form.
        path: dotted path of JSON keys.
    """
    cur: Any = section.model_dump(by_alias=True) if isinstance(section, BaseModel) else section
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    if isinstance(cur, bool) or not isinstance(cur, int | float):
        return None
    return float(cur)


def check_gate(
    gate: Gate,
    baseline: Section,
    candidate: Section,
    compare: Section,
    not_comparable: Collection[str] = (),
) -> GateResult:
    """Evaluate one gate against the report's sections.

    A metric that is missing from a section (no labels, no ``ok`` answer) fails the gate: a gate that cannot
    be checked must not let a release through. A gate on a latency stage listed in ``not_comparable`` is
    checked as asked, with a note saying why its values are not comparable.

    Args:
        gate: the gate.
        baseline: the baseline's run section.
        candidate: the candidate's run section.
        compare: the between-runs section.
        not_comparable: latency stages whose values include queue time of replayed traffic
            (:func:`workers.evaluation.analysis.not_comparable_stages`).

    Returns:
        The values compared, the limit, whether it passed and why.
    """
    if gate.path.startswith("compare."):
        base_v = None
        cand_v = metric_value(compare, gate.path[len("compare.") :])
    else:
        base_v = metric_value(baseline, gate.path)
        cand_v = metric_value(candidate, gate.path)

    def result(passed: bool, limit: float | None, reason: str) -> GateResult:
        return GateResult(
            gate=gate.spec,
            metric=gate.path,
            baseline=base_v,
            candidate=cand_v,
            limit=limit,
            passed=passed,
            reason=reason,
            note=note,
        )

    note = None
    if gate.stage in not_comparable:
        note = (
            f"{gate.stage} includes the time replayed requests waited in the shadow topics; it is not comparable "
            f"between the runs (gate {PROCESSING_STAGE}, e.g. latency.p50, instead)"
        )

    if cand_v is None or (gate.kind == "relative" and base_v is None):
        return result(False, None, "metric not available")
    if gate.kind == "min":
        passed = cand_v >= gate.amount
        return result(passed, gate.amount, f"{human(cand_v)} {'>=' if passed else '<'} {human(gate.amount)}")
    if gate.kind == "max":
        passed = cand_v <= gate.amount
        return result(passed, gate.amount, f"{human(cand_v)} {'<=' if passed else '>'} {human(gate.amount)}")
    assert base_v is not None
    allowed = abs(base_v) * gate.amount / 100.0 if gate.percent else gate.amount
    if gate.direction == "-":
        limit = base_v - allowed
        passed = cand_v >= limit
        rel = "above" if passed else "below"
    else:
        limit = base_v + allowed
        passed = cand_v <= limit
        rel = "below" if passed else "above"
    pct = percent_change(base_v, cand_v)
    change = "" if pct is None else f", {pct:+.1f}%"
    return result(
        passed, limit, f"candidate {human(cand_v)} {rel} limit {human(limit)} (baseline {human(base_v)}{change})"
    )
