"""Runs and answers shared by the evaluation unit tests (no network)."""

from __future__ import annotations

import uuid

from workers.contracts.messages import Provenance
from workers.evaluation.runs import Answer, RunData, SourceRef


def make_ids(n: int) -> list[uuid.UUID]:
    """``n`` request ids, 1 … n."""
    return [uuid.UUID(int=i + 1) for i in range(n)]


def make_answer(rid: uuid.UUID, status: str = "ok", docs: tuple[str, ...] = (), **kw: object) -> Answer:
    """An answer with one source per document id (chunk ``<doc>#<rank>``); the text only when ``ok``."""
    sources = tuple(SourceRef(d, f"{d}#{i}") for i, d in enumerate(docs))
    return Answer(
        request_id=rid, status=status, answer=kw.pop("answer", "x") if status == "ok" else None, sources=sources, **kw
    )  # type: ignore[arg-type]  # test helper passes the remaining fields


def two_runs() -> tuple[RunData, RunData]:
    """Six questions: the baseline answers all ``ok`` with 5 sources (k=5, template ``default``); the candidate
    (replay run ``r1``, k=3, ``concise``) answers four ``ok`` with 3 sources, one ``expired`` and one not at all."""
    ids = make_ids(6)
    queries = {rid: f"question {i}" for i, rid in enumerate(ids)}
    prov_b = Provenance(top_k=5, template_id="default", template_hash="aaa")
    prov_c = Provenance(top_k=3, template_id="concise", template_hash="bbb", run_id="r1")
    base = RunData("baseline", "topics:t.", queries=dict(queries))
    cand = RunData("candidate", "topics:rag.eval.r1.", queries=dict(queries))
    for i, rid in enumerate(ids):
        base.answers[rid] = make_answer(
            rid,
            docs=("d0", "d1", "d2", "d3", "d4"),
            timings_ms={"end_to_end_ms": 100.0 + i * 10, "embed_ms": 2.0},
            prompt_tokens=500,
            completion_tokens=24,
            provenance=prov_b,
        )
        if i < 5:
            cand.answers[rid] = make_answer(
                rid,
                status="ok" if i < 4 else "expired",
                docs=("d0", "d1", "d2"),
                timings_ms={"end_to_end_ms": 90.0 + i * 10, "embed_ms": 2.0},
                prompt_tokens=300,
                completion_tokens=20,
                provenance=prov_c,
            )
    return base, cand
