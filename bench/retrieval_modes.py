"""``python -m bench.retrieval_modes``: hit@1, hit@5 and MRR of each search mode on the 20 public questions,
with and without the title context in the chunks.

Python's reference docs (79 topics) are ingested twice into the bench stack's PostgreSQL (tables
``modes_ctx_chunks``, with each chunk's title line embedded and indexed, and ``modes_plain_chunks``, without), then
every question is searched in each mode (``dense``, ``text``, ``hybrid``) with the same query embedding, k = 5.
A hit is a chunk of one of the question's topics (shared/data/questions_public.jsonl). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from bench.env import QUESTIONS, bench_env
from workers.adapters.embedding import Embedder
from workers.adapters.pgvector import VectorStore
from workers.adapters.postgres import open_pool
from workers.retriever.documents import python_docs_documents
from workers.retriever.ingest import ingest, pydoc_title
from workers.settings import EmbeddingSettings, RetrieverSettings

MODES = ("dense", "text", "hybrid")
#: Text weights of the RRF sweep (the dense list's weight is 1).
WEIGHTS = (0.25, 0.5, 0.6, 0.75, 0.9, 1.0, 1.5)


def metrics(ranked: list[list[str]], relevant: list[set[str]]) -> dict[str, float]:
    """hit@1, hit@5 and MRR of ranked document ids against the relevant topics of each question."""
    hit1 = hit5 = rr = 0.0
    for docs, rel in zip(ranked, relevant, strict=True):
        ranks = [i for i, d in enumerate(docs) if d in rel]
        hit1 += bool(ranks and ranks[0] == 0)
        hit5 += bool(ranks and ranks[0] < 5)
        rr += 1.0 / (ranks[0] + 1) if ranks else 0.0
    n = len(ranked)
    return {"hit@1": hit1 / n, "hit@5": hit5 / n, "mrr": rr / n}


def main(argv: Sequence[str] | None = None) -> int:
    """Ingest, search, print the table; 0 on success."""
    args = argparse.ArgumentParser(prog="python -m bench.retrieval_modes", description=__doc__.splitlines()[0])
    args.add_argument("--keep-stack", action="store_true", help="leave the bench stack running")
    opts = args.parse_args(argv)
    questions = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    relevant = [set(q["topics"]) for q in questions]
    rows: list[tuple[str, str, dict[str, float]]] = []
    sweep: dict[float, dict[str, float]] = {}
    with (
        bench_env(("postgres",), keep_stack=opts.keep_stack) as env,
        Embedder.from_settings(EmbeddingSettings()) as emb,
    ):
        pool = open_pool(env.stack.database_url, min_size=1, max_size=2, vector=True)
        try:
            vectors = emb.encode([q["q"] for q in questions]).vectors
            for label, titles in (("with title context", pydoc_title), ("without", None)):
                table = "modes_ctx_chunks" if titles else "modes_plain_chunks"
                store = VectorStore.from_settings(pool, RetrieverSettings(table=table), emb.dimension)
                ingest(python_docs_documents(), emb, store, progress=False, titles=titles)
                texts = [q["q"] for q in questions]
                for mode in MODES:
                    found: list[Any] = store.search_many(vectors, 5, None, None, texts, mode=mode)
                    ranked = [[h.document_id for h in hits] for hits in found]
                    rows.append((mode, label, metrics(ranked, relevant)))
                if titles is not None:
                    for w in WEIGHTS:
                        store.text_weight = w
                        found = store.search_many(vectors, 5, None, None, texts, mode="hybrid")
                        sweep[w] = metrics([[h.document_id for h in hits] for hits in found], relevant)
        finally:
            pool.close()
    print(f"\nretrieval on the {len(questions)} public questions (k = 5, all-MiniLM-L6-v2, RRF k = 60)\n")
    print("| mode | chunks | hit@1 | hit@5 | MRR |")
    print("|---|---|---|---|---|")
    for mode, label, m in rows:
        print(f"| {mode} | {label} | {m['hit@1']:.2f} | {m['hit@5']:.2f} | {m['mrr']:.3f} |")
    print("\nhybrid with title context by text weight (dense weight 1): " + ", ".join(
        f"{w:g}: hit@1 {m['hit@1']:.2f} MRR {m['mrr']:.3f}" for w, m in sweep.items()))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
