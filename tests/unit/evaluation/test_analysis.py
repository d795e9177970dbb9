"""The evaluation's pure metrics: percentiles, summaries, counts and rates, retrieval quality, between runs."""

from __future__ import annotations

import pytest

from workers.evaluation.analysis import (
    PROCESSING_STAGE,
    compare_runs,
    cosine,
    jaccard,
    latency_stats,
    not_comparable_stages,
    overlap,
    percentile,
    rates,
    retrieval_metrics,
    status_counts,
    summarize,
)
from workers.evaluation.models import Rates, Retrieval, Summary
from workers.evaluation.runs import RunData, with_processing

from .cases import make_answer, make_ids

# --------------------------------------------------------------------------- percentiles, summaries


def test_percentile_interpolates_like_numpy() -> None:
    xs = [1.0, 2.0, 3.0, 4.0]
    assert percentile(xs, 0) == 1.0
    assert percentile(xs, 100) == 4.0
    assert percentile(xs, 50) == pytest.approx(2.5)
    assert percentile(xs, 90) == pytest.approx(3.7)
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile(xs, 101)


def test_summarize_gives_mean_min_max_and_percentiles_and_only_n_when_empty() -> None:
    s = summarize([10.0, 20.0, 30.0])
    assert s.n == 3 and s.mean == 20.0 and s.p50 == 20.0 and s.min == 10.0 and s.max == 30.0
    assert summarize([]) == Summary(n=0)
    assert summarize([]).as_json() == {"n": 0}


def test_latency_stats_only_ok_and_in_stage_order() -> None:
    a, b, c = make_ids(3)
    answers = [
        make_answer(a, timings_ms={"end_to_end_ms": 100.0, "embed_ms": 5.0, "zzz_ms": 1.0}),
        make_answer(b, timings_ms={"end_to_end_ms": 300.0, "embed_ms": 7.0}),
        make_answer(c, status="error", timings_ms={"end_to_end_ms": 99999.0}),
    ]
    st = latency_stats(answers)
    assert list(st) == ["embed_ms", "processing_ms", "end_to_end_ms", "zzz_ms"]
    assert st["end_to_end_ms"].p50 == 200.0
    assert st["end_to_end_ms"].max == 300.0  # the error's latency is not counted


# --------------------------------------------------------------------------- counts and rates


def test_status_counts_count_missing_answers_and_rates_group_errors() -> None:
    ids = make_ids(5)
    answers = {
        ids[0]: make_answer(ids[0]),
        ids[1]: make_answer(ids[1]),
        ids[2]: make_answer(ids[2], status="expired"),
        ids[3]: make_answer(ids[3], status="model_unavailable"),
    }
    c = status_counts(ids, answers)
    assert c["total"] == 5 and c["ok"] == 2 and c["expired"] == 1 and c["model_unavailable"] == 1
    assert c["missing"] == 1 and c["error"] == 0
    r = rates(c)
    assert r == Rates(ok=0.4, error=0.2, expired=0.2, missing=0.2)
    assert r.as_json() == {"ok": 0.4, "error": 0.2, "expired": 0.2, "missing": 0.2, "no_context": 0.0}
    assert rates(status_counts([], {})).ok == 0.0


# --------------------------------------------------------------------------- retrieval quality


def test_hit_at_k_and_mrr_count_unanswered_labelled_requests_as_misses() -> None:
    ids = make_ids(4)
    queries = {ids[0]: "Q one", ids[1]: "q  ONE two", ids[2]: "unlabelled", ids[3]: "q three"}
    labels = {"q one": frozenset({"a"}), "q one two": frozenset({"b", "c"}), "q three": frozenset({"z"})}
    answers = {
        ids[0]: make_answer(ids[0], docs=("a", "x")),  # rank 1
        ids[1]: make_answer(ids[1], docs=("x", "y", "z", "w", "v", "c")),  # rank 6: hit@5 miss, mrr 1/6
        ids[2]: make_answer(ids[2], docs=("a",)),  # no label: not counted
        # ids[3] unanswered: a miss
    }
    m = retrieval_metrics(ids, queries, answers, labels)
    assert m.labelled == 3
    assert m.hit_at_1 == pytest.approx(1 / 3)
    assert m.hit_at_5 == pytest.approx(1 / 3)
    assert m.mrr == pytest.approx((1 + 1 / 6) / 3)
    assert list(m.as_json()) == ["hit@1", "hit@5", "mrr", "labelled", "sources_k"]
    assert m.sources_k == 6  # the most sources an answer had: the run's k
    assert m.get("hit@5") == m.hit_at_5 and m.get("mrr") == m.mrr and m.get("hit@9") is None
    none_labelled = retrieval_metrics(ids, queries, answers, {"nothing": frozenset({"a"})})
    assert none_labelled == Retrieval(labelled=0, sources_k=6)
    assert retrieval_metrics(ids, queries, {}, labels).as_json() == {
        "hit@1": 0.0,
        "hit@5": 0.0,
        "mrr": 0.0,
        "labelled": 3,
    }


# --------------------------------------------------------------------------- between runs


def test_overlap_is_the_share_of_the_smaller_set_found_in_the_larger() -> None:
    k5 = ["c1", "c2", "c3", "c4", "c5"]
    assert overlap(k5[:3], k5) == 1.0  # k=3 within k=5: a perfect subset (Jaccard says 0.6)
    assert jaccard(k5[:3], k5) == pytest.approx(0.6)
    assert overlap(["c1", "x", "y"], k5) == pytest.approx(1 / 3)
    assert overlap(k5, ["z"]) == 0.0
    assert overlap([], []) == 1.0 and overlap(["a"], []) == 0.0


def test_processing_latency_leaves_out_queue_waits_and_queue_stages_are_apart_for_replayed_runs() -> None:
    t = with_processing({"retriever_queue_ms": 18_000.0, "generator_queue_ms": 500.0, "end_to_end_ms": 20_000.0})
    assert t[PROCESSING_STAGE] == 1500.0
    assert with_processing({"embed_ms": 3.0}) == {"embed_ms": 3.0}  # no end to end: no processing time
    ids = make_ids(1)
    live, replayed = RunData("baseline", "live"), RunData("candidate", "run:x", replayed={ids[0]})
    stages = ["embed_ms", "retriever_queue_ms", PROCESSING_STAGE, "end_to_end_ms"]
    assert not_comparable_stages(live, replayed, stages) == ["retriever_queue_ms", "end_to_end_ms"]
    assert not_comparable_stages(live, RunData("candidate", "topics:x"), stages) == []


def test_jaccard_and_cosine_including_empty_sets_and_zero_vectors() -> None:
    assert jaccard(["a", "b"], ["b", "c"]) == pytest.approx(1 / 3)
    assert jaccard([], []) == 1.0
    assert jaccard(["a"], []) == 0.0
    assert cosine([1.0, 0.0], [1.0, 0.0]) == pytest.approx(1.0)
    assert cosine([1.0, 0.0], [0.0, 2.0]) == pytest.approx(0.0)
    assert cosine([0.0, 0.0], [1.0, 1.0]) == 0.0


def test_compare_runs_joins_by_request_id() -> None:
    ids = make_ids(4)
    base = RunData(
        "baseline",
        "b",
        answers={
            ids[0]: make_answer(ids[0], docs=("a", "b"), answer="same"),
            ids[1]: make_answer(ids[1], docs=("a",), answer="left"),
            ids[2]: make_answer(ids[2], status="error"),
        },
    )
    cand = RunData(
        "candidate",
        "c",
        answers={
            ids[0]: make_answer(ids[0], docs=("a",), answer="same"),
            ids[1]: make_answer(ids[1], docs=("c",), answer="right"),
            ids[2]: make_answer(ids[2], docs=("a",)),
            ids[3]: make_answer(ids[3], docs=("a",)),  # not in the baseline
        },
    )
    calls: list[list[str]] = []

    def embed(texts: list[str]) -> list[list[float]]:
        calls.append(texts)
        return [[1.0, 0.0] if t in ("same", "left") else [0.0, 1.0] for t in texts]

    summary, per = compare_runs(ids, base, cand, embed)
    assert summary.joined == 3 and summary.both_ok == 2
    assert calls == [["same", "left", "same", "right"]]
    assert per[ids[0]].model_dump() == {
        "chunk_overlap": 1.0,  # the one source of the candidate is among the baseline's two
        "document_overlap": 1.0,
        "answer_similarity": pytest.approx(1.0),
    }
    assert per[ids[1]].answer_similarity == pytest.approx(0.0)
    assert summary.answer_similarity.mean == pytest.approx(0.5)
    assert summary.identical_answers == 0.5
    assert summary.document_overlap.mean == pytest.approx(0.5)  # 1.0 and 0.0
    no_sim, _ = compare_runs(ids, base, cand, None)
    assert no_sim.answer_similarity == Summary(n=0)
    assert no_sim.as_json()["answer_similarity"] == {"n": 0}


def test_citation_stats_count_ok_answers_citing_a_passage_and_their_mean_groundedness() -> None:
    import uuid

    from workers.evaluation.analysis import citation_stats
    from workers.evaluation.runs import Answer, SourceRef

    def ans(status: str, cited: bool, grounded: float | None) -> Answer:
        src = (SourceRef("d", "d#0", 0.9, cited), SourceRef("e", "e#0", 0.8, False))
        return Answer(uuid.uuid4(), status, "an answer" if status == "ok" else None, src, groundedness=grounded)

    stats = citation_stats(
        [ans("ok", True, 0.5), ans("ok", False, 0.0), ans("ok", True, None), ans("error", True, 1.0)]
    )
    assert stats.answers == 3
    assert stats.cited_share == 2 / 3
    assert stats.groundedness_mean == 0.25  # over the two ok answers that report it
    assert citation_stats([]).as_json() == {"answers": 0}
