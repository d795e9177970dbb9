"""Release gates of ``ragstream evaluate --fail-on``: a regression becomes a failed evaluation (exit status 1).

A gate (:func:`parse_gate`) names a metric by its dotted path in the JSON form of a report section
(``retrieval.hit@5``, ``latency_ms.end_to_end_ms.p99``, ``rates.expired``) or of the between-runs section
(``compare.answer_similarity.mean``), and either the change allowed against the baseline or a bound on the
candidate's value. :func:`check_gate` evaluates it against the report's sections.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from pydantic import BaseModel

from workers.contracts.errors import ConfigError
from workers.evaluation.models import GateResult

#: Short names accepted in gates for the full metric paths.
GATE_ALIASES = {
    "mrr": "retrieval.mrr",
    "error_rate": "rates.error",
    "expiry_rate": "rates.expired",
    "missing_rate": "rates.missing",
    "ok_rate": "rates.ok",
    "no_context_rate": "rates.no_context",
}

#: A report section: a model of :mod:`workers.evaluation.models`, or its JSON form.
Section: TypeAlias = BaseModel | Mapping[str, Any]


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


def check_gate(gate: Gate, baseline: Section, candidate: Section, compare: Section) -> GateResult:
    """Evaluate one gate against the report's sections.

    A metric that is missing from a section (no labels, no ``ok`` answer) fails the gate: a gate that cannot
    be checked must not let a release through.

    Args:
        gate: the gate.
        baseline: the baseline's run section.
        candidate: the candidate's run section.
        compare: the between-runs section.

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
        )

    if cand_v is None or (gate.kind == "relative" and base_v is None):
        return result(False, None, "metric not available")
    if gate.kind == "min":
        passed = cand_v >= gate.amount
        return result(passed, gate.amount, f"{cand_v:.4g} {'>=' if passed else '<'} {gate.amount:.4g}")
    if gate.kind == "max":
        passed = cand_v <= gate.amount
        return result(passed, gate.amount, f"{cand_v:.4g} {'<=' if passed else '>'} {gate.amount:.4g}")
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
    return result(passed, limit, f"candidate {cand_v:.4g} {rel} limit {limit:.4g} (baseline {base_v:.4g})")
