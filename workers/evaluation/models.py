"""The typed evaluation report of ``ragstream evaluate`` (pydantic; no logic beyond serialization).

:class:`Report` is what :func:`workers.evaluation.report.build_report` returns, what
:func:`workers.evaluation.render.render_html` renders and what ``report.json`` holds
(:meth:`ReportPart.as_json`). Field names are Python names; where the JSON key is not one (``hit@1``,
``schema``) the field has an alias, and the JSON is always written by alias. Maps whose keys are data (stages
in ``latency_ms``, statuses in ``counts``, the provenance settings) are dict-typed fields. Optional metrics
that the report leaves out when they are unknown (a summary of no values is ``{"n": 0}``, retrieval without
labelled requests is ``{"labelled": 0}``) are left out of the JSON rather than written as ``null``.

Units: ``*_ms`` in milliseconds, rates and similarities as fractions 0–1, tokens per answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_serializer

#: Schema id written into the JSON report.
REPORT_SCHEMA = "ragstream.evaluation/1"


def _is_none(value: object) -> bool:
    return value is None


class ReportPart(BaseModel):
    """Base of the report's models: frozen, no unknown fields, built by field name, written by alias."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True)

    def as_json(self) -> dict[str, Any]:
        """The JSON form (keys by alias, unknown metrics left out), as ``report.json`` holds it."""
        return self.model_dump(mode="python", by_alias=True)


class Summary(ReportPart):
    """Count, mean and percentiles of some values; only ``n`` (0) when there are none.

    Attributes:
        n: how many values.
        mean: arithmetic mean.
        min: smallest value.
        p50: median (linear interpolation, as numpy).
        p90: 90th percentile.
        p99: 99th percentile.
        max: largest value.
    """

    n: int
    mean: float | None = Field(None, exclude_if=_is_none)
    min: float | None = Field(None, exclude_if=_is_none)
    p50: float | None = Field(None, exclude_if=_is_none)
    p90: float | None = Field(None, exclude_if=_is_none)
    p99: float | None = Field(None, exclude_if=_is_none)
    max: float | None = Field(None, exclude_if=_is_none)

    def get(self, key: str) -> float | None:
        """The statistic named ``key`` (``mean``, ``p50``, ...), ``None`` when unknown or not a statistic."""
        value = getattr(self, key, None) if key in type(self).model_fields else None
        return None if value is None else float(value)


class TokenSummary(Summary):
    """A :class:`Summary` of tokens per ``ok`` answer with their sum.

    Attributes:
        total: tokens over all ``ok`` answers.
    """

    total: float


class TokenStats(ReportPart):
    """Tokens per ``ok`` answer.

    Attributes:
        prompt: prompt tokens (LLM tokenizer).
        completion: generated tokens.
    """

    prompt: TokenSummary
    completion: TokenSummary


class Rates(ReportPart):
    """Fractions (0–1) of the evaluation set's requests.

    Attributes:
        ok: answered ``ok``.
        error: answered ``error``, ``model_unavailable``, ``rejected`` or dead-lettered.
        expired: answered ``expired``.
        missing: not answered in the run.
        no_context: answered ``no_context`` (the search found no passage; no LLM call).
    """

    ok: float
    error: float
    expired: float
    missing: float
    no_context: float = 0.0


class Retrieval(ReportPart):
    """Retrieval quality over the labelled requests; only ``labelled`` (0) without any.

    Attributes:
        hit_at_1: fraction whose best source is relevant (JSON ``hit@1``).
        hit_at_5: fraction with a relevant source in the first 5 (JSON ``hit@5``).
        mrr: mean reciprocal rank of the first relevant source (0 for none).
        labelled: requests matched to a labelled question.
        sources_k: most sources any answer of the run had (its retrieval k); when it is smaller than 5,
            hit@5 is in fact hit@k (left out when no answer had sources).
    """

    hit_at_1: float | None = Field(None, alias="hit@1", exclude_if=_is_none)
    hit_at_5: float | None = Field(None, alias="hit@5", exclude_if=_is_none)
    mrr: float | None = Field(None, exclude_if=_is_none)
    labelled: int
    sources_k: int | None = Field(None, exclude_if=_is_none)

    def get(self, key: str) -> float | None:
        """The metric under its JSON key (``hit@1``, ``hit@5``, ``mrr``, ``labelled``), ``None`` when unknown."""
        for name, info in type(self).model_fields.items():
            if key in (name, info.alias):
                value = getattr(self, name)
                return None if value is None else float(value)
        return None


class AnswerCitations(ReportPart):
    """How ``ok`` answers cite their passages (the generator's citations: ``[n]`` markers or attribution).

    Attributes:
        answers: ``ok`` answers.
        cited_share: fraction of them citing at least one passage (left out without answers).
        groundedness_mean: mean share of an answer's content words found in the passages it cites, over the
            answers that report it (left out when none does).
    """

    answers: int
    cited_share: float | None = Field(None, exclude_if=_is_none)
    groundedness_mean: float | None = Field(None, exclude_if=_is_none)


class ProvenanceCount(ReportPart):
    """One distinct provenance of a run's answers.

    Attributes:
        answers: answers it produced.
        provenance: its settings (``Provenance`` without ``run_id``), or ``{"recorded": false}``.
    """

    answers: int
    provenance: dict[str, JsonValue]


class RunSection(ReportPart):
    """Per-run metrics over the evaluation set.

    Attributes:
        label: ``baseline`` or ``candidate``.
        source: where the run was read (``topics:rag.eval.r1.``, ``table:rag_traces``).
        replay_runs: replay run ids in the answers' provenance.
        replayed: requests of the evaluation set this run read as replayed records (header ``replay_run``).
        counts: requests by status (``missing`` = no answer), plus ``total``.
        duplicates: answers seen again for an already answered request id.
        undecodable: records that were not valid messages.
        rates: fractions of the requests by outcome.
        latency_ms: stage → latency summary (ms) over ``ok`` answers, stages in pipeline order.
        tokens: tokens per ``ok`` answer.
        retrieval: hit@k and MRR over the labelled requests.
        citations: how the ``ok`` answers cite their passages.
        provenance: the distinct provenances, most answers first.
    """

    label: str
    source: str
    replay_runs: list[str]
    replayed: int = 0
    counts: dict[str, int]
    duplicates: int
    undecodable: int
    rates: Rates
    latency_ms: dict[str, Summary]
    tokens: TokenStats
    retrieval: Retrieval
    citations: AnswerCitations = AnswerCitations(answers=0)
    provenance: list[ProvenanceCount]


class Compare(ReportPart):
    """Between-runs metrics over the requests both runs answered ``ok``.

    Attributes:
        joined: requests both runs answered.
        both_ok: requests both runs answered ``ok``.
        chunk_overlap: overlap of the retrieved chunk ids: the share of the smaller set found in the larger
            (|A ∩ B| / min(|A|, |B|); k=3 sources all among the k=5 of the other run give 1.0).
        document_overlap: the same for the retrieved document ids.
        identical_answers: fraction of identical answer texts (whitespace stripped).
        answer_similarity: cosine of the answers' embeddings (``{"n": 0}`` when skipped).
    """

    joined: int
    both_ok: int
    chunk_overlap: Summary
    document_overlap: Summary
    identical_answers: float
    answer_similarity: Summary


class PairScores(ReportPart):
    """Between-runs values of one request both runs answered ``ok``.

    Attributes:
        chunk_overlap: share of the smaller set of retrieved chunk ids found in the larger.
        document_overlap: the same for the retrieved document ids.
        answer_similarity: cosine of the answers' embeddings (``None`` when skipped).
    """

    chunk_overlap: float
    document_overlap: float
    answer_similarity: float | None = None


class GateResult(ReportPart):
    """The outcome of one release gate.

    Attributes:
        gate: the gate as given.
        metric: the full metric path.
        baseline: the baseline's value (``None`` for ``compare.`` metrics or when unknown).
        candidate: the candidate's (or between-runs) value, ``None`` when unknown.
        limit: the value the candidate was held to, ``None`` when the metric was unknown.
        passed: whether the gate holds.
        reason: why, in words.
        note: a caveat (a latency that includes queue time of replayed traffic), left out when none.
    """

    gate: str
    metric: str
    baseline: float | None
    candidate: float | None
    limit: float | None
    passed: bool
    reason: str
    note: str | None = Field(None, exclude_if=_is_none)


class SourceRow(ReportPart):
    """A retrieved passage of an answer.

    Attributes:
        document_id: the document.
        chunk_id: the chunk.
        score: cosine similarity of the chunk to the query.
    """

    document_id: str
    chunk_id: str
    score: float


class RunAnswer(ReportPart):
    """One run's answer to one request of the evaluation set.

    Attributes:
        status: the answer's status, ``missing`` when there is none.
        answer: the answer text (``None`` unless ``ok``).
        error_class: the error class of a failed request.
        end_to_end_ms: end-to-end latency (ms), re-based for replayed requests.
        processing_ms: time spent in the stages, queues excluded (ms).
        sources: the retrieved passages in rank order.
        first_hit_rank: 1-based rank of the first relevant source (labelled requests only).
        completion_tokens: generated tokens.
    """

    status: str
    answer: str | None = None
    error_class: str | None = Field(None, exclude_if=_is_none)
    end_to_end_ms: float | None
    processing_ms: float | None = None
    sources: list[SourceRow]
    first_hit_rank: int | None
    completion_tokens: int

    @property
    def documents(self) -> list[str]:
        """Document ids of the sources in rank order."""
        return [s.document_id for s in self.sources]


class RequestRow(ReportPart):
    """One request of the evaluation set in both runs; the between-runs values when both answered ``ok``.

    Attributes:
        request_id: the request id.
        query: its query text, ``None`` when no run saw the request.
        baseline: the baseline's answer.
        candidate: the candidate's answer.
        relevant: the labelled relevant document ids (empty when the question is not labelled).
        changed: what differs between the runs: ``status`` and/or ``hit`` (a relevant source found in one run
            and not in the other); such requests come first in the report.
        chunk_overlap: see :class:`PairScores` (left out unless both answered ``ok``).
        document_overlap: see :class:`PairScores`.
        answer_similarity: see :class:`PairScores` (left out when skipped).
    """

    request_id: str
    query: str | None
    baseline: RunAnswer
    candidate: RunAnswer
    relevant: list[str] = Field(default_factory=list)
    changed: list[str] = Field(default_factory=list)
    chunk_overlap: float | None = Field(None, exclude_if=_is_none)
    document_overlap: float | None = Field(None, exclude_if=_is_none)
    answer_similarity: float | None = Field(None, exclude_if=_is_none)


class Report(ReportPart):
    """The evaluation report: both runs over the same requests, the comparison and the gates.

    Attributes:
        schema_id: :data:`REPORT_SCHEMA` (JSON ``schema``).
        generated_at: when it was built (UTC; ISO 8601 in the JSON).
        labels: the labelled questions file, if one was given.
        requests_compared: size of the evaluation set.
        baseline: the run compared against.
        candidate: the run under evaluation.
        compare: between-runs metrics.
        gates: one result per gate, in the order given.
        passed: whether every gate holds (true without gates).
        latency_not_comparable: latency stages whose values include the time replayed requests waited in
            the shadow topics (queue and end-to-end times); the other stages compare processing time.
        requests: one row per request of the evaluation set, those whose status or hit changed first.
    """

    schema_id: str = Field(REPORT_SCHEMA, alias="schema")
    generated_at: datetime
    labels: str | None
    requests_compared: int
    baseline: RunSection
    candidate: RunSection
    compare: Compare
    gates: list[GateResult]
    passed: bool
    latency_not_comparable: list[str] = Field(default_factory=list)
    requests: list[RequestRow]

    @field_serializer("generated_at")
    def _iso(self, value: datetime) -> str:
        return value.isoformat()
