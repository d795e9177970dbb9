"""Ingestion: split documents into chunks that fit the embedding model, embed them, store them.

Chunks are measured in tokens of the EMBEDDING model's tokenizer, its special tokens (``[CLS]``,
``[SEP]``) included, and never exceed ``max_tokens`` (256 for all-MiniLM-L6-v2): every chunk is counted
after it is cut, so nothing relies on the model's silent truncation. Cuts prefer paragraph breaks, then
sentence ends, then line breaks, then spaces between words; a run of text with none of these is cut at
token offsets. Consecutive chunks overlap by about ``overlap`` tokens.

The documents come from :mod:`workers.retriever.documents` (a folder, file by file with reasons, or Python's
reference docs); :func:`summary_rows` joins what reading and ingesting did to each file.

No torch or Kafka here: the embedder and the store come in as arguments.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tqdm import tqdm

from workers.adapters.interfaces import ChunkRow
from workers.retriever.documents import FolderDocuments

if TYPE_CHECKING:
    from workers.adapters.interfaces import EmbedResult


class ChunkStore(Protocol):
    """Where ingestion writes (implementation: :class:`workers.adapters.pgvector.VectorStore`)."""

    table: str

    def ensure_schema(self, model_name: str | None = None) -> None:
        """Create the table and indexes if missing."""
        ...

    def existing_hashes(self, document_ids: Sequence[str]) -> set[tuple[str, str]]:
        """``(document_id, content_hash)`` of the chunks stored for these documents."""
        ...

    def upsert(self, chunks: Sequence[ChunkRow]) -> int:
        """Store chunks; returns the rows added."""
        ...

    def delete_documents(self, document_ids: Sequence[str]) -> int:
        """Delete every chunk of these documents; returns rows deleted."""
        ...


logger = logging.getLogger(__name__)

# Break priorities at a token boundary (higher = better place to cut).
_PARAGRAPH, _SENTENCE, _LINE, _WORD, _NONE = 4, 3, 2, 1, 0
_SENTENCE_END = re.compile(r"[.!?:;][\"')\]]*$")


class ChunkTokenizer(Protocol):
    """What chunking needs from a tokenizer (``tokens.LocalTokenizerCounter`` provides it)."""

    @property
    def num_special_tokens(self) -> int:
        """Tokens added to every text (2 for BERT)."""
        ...

    def count(self, texts: list[str]) -> list[int]:
        """Tokens of each text, special tokens included."""
        ...

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the text's tokens, special tokens excluded."""
        ...


class DocumentEmbedder(Protocol):
    """What ingestion needs from the embedder (``embedding.Embedder`` provides it)."""

    @property
    def tokenizer(self) -> ChunkTokenizer: ...

    @property
    def max_seq_length(self) -> int: ...

    @property
    def model_name(self) -> str: ...

    def encode(self, texts: list[str]) -> EmbedResult: ...


@dataclass(frozen=True)
class Chunk:
    """A piece of a document small enough for the embedding model.

    Attributes:
        chunk_id: ``f"{document_id}#{chunk_index}"``.
        document_id: the source document.
        chunk_index: 0-based position in the document.
        text: ``document_text[start_char:end_char]``.
        content_hash: sha256 hex of ``text`` (UTF-8).
        token_count: tokens of the embedding tokenizer, special tokens included (<= max_tokens).
        start_char: offset of the first character in the document.
        end_char: offset after the last character.
        metadata: copied to the store (matched by search filters).
        context: the document's title and the chunk's nearest heading, embedded and indexed with the text but
            stored apart (the prompt shows ``text`` alone); ``content_hash`` and ``token_count`` cover both.
    """

    chunk_id: str
    document_id: str
    chunk_index: int
    text: str
    content_hash: str
    token_count: int
    start_char: int
    end_char: int
    metadata: dict[str, Any] = field(default_factory=dict)
    context: str = ""

    @property
    def embedded_text(self) -> str:
        """What the embedding model reads: the context line, then the text."""
        return embedded(self.context, self.text)

    def to_row(self, embedding: Any) -> ChunkRow:
        """The store row of this chunk with its ``(dim,)`` float32 embedding."""
        return ChunkRow(
            chunk_id=self.chunk_id,
            document_id=self.document_id,
            chunk_index=self.chunk_index,
            text=self.text,
            content_hash=self.content_hash,
            token_count=self.token_count,
            embedding=embedding,
            metadata=dict(self.metadata),
            context=self.context,
        )


def embedded(context: str, text: str) -> str:
    """The text a chunk is embedded (and hashed) as: ``context`` on its own line before ``text`` (``text`` alone
    without a context)."""
    return f"{context}\n{text}" if context else text


#: A Markdown ATX heading line (``# Title`` ... ``###### Title``).
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)
#: Most characters of context kept in front of a chunk (a long heading is cut).
MAX_CONTEXT_CHARS = 160


def markdown_headings(text: str) -> list[tuple[int, str]]:
    """``(offset, heading text)`` of every Markdown ATX heading, in document order."""
    return [(m.start(), m.group(1).strip()) for m in _HEADING.finditer(text)]


def file_title(document_id: str, text: str) -> str:
    """The title of a file document: its first Markdown heading, else its file name."""
    heads = markdown_headings(text)
    return heads[0][1] if heads else document_id.rsplit("/", 1)[-1]


def pydoc_title(document_id: str, text: str) -> str:
    """The title of a Python reference topic: the topic key and the topic's first non-empty line."""
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{document_id}: {first}" if first else document_id


def content_hash(text: str) -> str:
    """sha256 hex digest of a chunk's text (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _break_priority(text: str, spans: list[tuple[int, int]], i: int) -> int:
    """How good it is to start a new chunk at token ``i`` (cut between token i-1 and i)."""
    prev_end = spans[i - 1][1]
    gap = text[prev_end : spans[i][0]]
    if "\n" in gap and gap.count("\n") >= 2:
        return _PARAGRAPH
    prev_tok = text[spans[i - 1][0] : prev_end]
    if gap and _SENTENCE_END.search(prev_tok):
        return _SENTENCE
    if "\n" in gap:
        return _LINE
    if gap:
        return _WORD
    return _NONE


def chunk_text(
    document_id: str,
    text: str,
    tokenizer: ChunkTokenizer,
    max_tokens: int = 256,
    overlap: int = 32,
    metadata: dict[str, Any] | None = None,
    title: str = "",
) -> list[Chunk]:
    """Split a document into chunks of at most ``max_tokens`` tokens, special tokens included.

    With a ``title`` each chunk gets a context line, the title and (Markdown) the nearest heading at or before the
    chunk, which is embedded with the chunk: the token budget of the text shrinks by the longest context's tokens.

    Args:
        document_id: id of the document; chunk ids are ``f"{document_id}#{index}"``.
        text: the document text.
        tokenizer: the EMBEDDING model's tokenizer (counts and token offsets).
        max_tokens: most tokens per chunk, ``[CLS]``/``[SEP]`` included (the model's max_seq_length).
        overlap: tokens shared by consecutive chunks (the next chunk starts about this many tokens
            before the previous one ends, at a word start when one is near).
        metadata: stored with every chunk.
        title: the document's title (empty: no context line).

    Returns:
        The chunks in document order; empty for a text without tokens.

    Raises:
        ValueError: ``max_tokens`` leaves no room for text, or ``overlap`` is not below half of it.
    """
    heads = markdown_headings(text) if title else []
    contexts = [title[:MAX_CONTEXT_CHARS]] + [_context(title, h) for _, h in heads]
    context_tokens = max(tokenizer.count([c + "\n" for c in contexts if c]) or [0])
    budget = max_tokens - tokenizer.num_special_tokens - (context_tokens - tokenizer.num_special_tokens if title else 0)
    if budget < 2:
        raise ValueError(f"max_tokens {max_tokens} leaves no room for text")
    if not 0 <= overlap < budget // 2:
        raise ValueError(f"overlap {overlap} must be >= 0 and below half the chunk ({budget // 2} tokens)")
    spans = tokenizer.offsets(text)
    n = len(spans)
    if n == 0:
        return []
    prio = [_NONE] + [_break_priority(text, spans, i) for i in range(1, n)]

    # Token ranges [start, end) of each chunk.
    ranges: list[tuple[int, int]] = []
    start = 0
    while start < n:
        limit = min(start + budget, n)
        if limit == n:
            end = n
        else:
            # Best break in the second half of the window; the latest one among equals.
            lo = start + max(budget // 2, overlap + 1)
            best, end = -1, limit
            for i in range(limit, lo - 1, -1):
                if prio[i] > best:
                    best, end = prio[i], i
                    if best == _PARAGRAPH:
                        break
        ranges.append((start, end))
        if end >= n:
            break
        nxt = max(end - overlap, start + 1)
        # Start the overlap at a sentence or line start in its first half if there is one, else at the
        # next word start.
        best_j, best_p = nxt, prio[nxt]
        for j in range(nxt, max(nxt + 1, end - overlap // 2)):
            if prio[j] > best_p:
                best_j, best_p = j, prio[j]
        if best_p < _WORD:
            for j in range(nxt, min(nxt + 8, end)):
                if prio[j] >= _WORD:
                    best_j = j
                    break
        start = best_j

    texts = [text[spans[s][0] : spans[e - 1][1]] for s, e in ranges]
    ctx = [_nearest(title, heads, spans[s][0]) for s, _e in ranges]
    counts = tokenizer.count([embedded(c, t) for c, t in zip(ctx, texts, strict=True)])
    # A cut inside a word may re-tokenize into more pieces than the token slice: shrink until it fits.
    for idx, (count, (s, e)) in enumerate(zip(counts, ranges, strict=True)):
        while count > max_tokens and e - s > 1:
            e -= max(1, count - max_tokens)
            texts[idx] = text[spans[s][0] : spans[e - 1][1]]
            count = tokenizer.count([embedded(ctx[idx], texts[idx])])[0]
            ranges[idx] = (s, e)
        if count > max_tokens:
            raise ValueError(f"cannot cut {document_id!r} into chunks of {max_tokens} tokens")
        counts[idx] = count

    meta = dict(metadata or {})
    return [
        Chunk(
            chunk_id=f"{document_id}#{i}",
            document_id=document_id,
            chunk_index=i,
            text=t,
            content_hash=content_hash(embedded(x, t)),
            token_count=c,
            start_char=spans[s][0],
            end_char=spans[e - 1][1],
            metadata=meta,
            context=x,
        )
        for i, (t, c, (s, e), x) in enumerate(zip(texts, counts, ranges, ctx, strict=True))
    ]


def _context(title: str, heading: str) -> str:
    """The context line of a chunk under ``heading`` in a document titled ``title`` (cut to the limit)."""
    line = title if not heading or heading == title else f"{title} — {heading}"
    return line[:MAX_CONTEXT_CHARS]


def _nearest(title: str, heads: list[tuple[int, str]], offset: int) -> str:
    """The context of a chunk starting at character ``offset``: the title and the last heading at or before it."""
    if not title:
        return ""
    before = [h for pos, h in heads if pos <= offset]
    return _context(title, before[-1] if before else "")


@dataclass(frozen=True)
class IngestReport:
    """What one :func:`ingest` call did.

    Attributes:
        documents: documents read.
        chunks: chunks cut from them.
        inserted: rows added to the store.
        skipped: chunks already stored (not embedded again) or rejected as duplicates by the store.
        seconds: wall time (s).
        chunks_by_document: chunks cut from each document.
        failed: documents that could not be cut into chunks, with the reason (the others are ingested).
    """

    documents: int
    chunks: int
    inserted: int
    skipped: int
    seconds: float
    chunks_by_document: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def ingest(
    documents: Iterable[tuple[str, str]],
    embedder: DocumentEmbedder,
    store: ChunkStore,
    batch_size: int = 64,
    progress: bool = True,
    *,
    max_tokens: int | None = None,
    overlap: int = 32,
    metadata: dict[str, Any] | None = None,
    titles: Callable[[str, str], str] | None = file_title,
) -> IngestReport:
    """Chunk, embed and store documents; chunks already stored are neither embedded nor written again, and a
    document whose chunks changed is replaced as a whole (its old chunks deleted, its new ones written).

    The store's table is created if missing (``store.ensure_schema``).

    Args:
        documents: ``(document_id, text)`` pairs.
        embedder: the embedding model.
        store: the vector store (its dimension must equal the embedder's).
        batch_size: chunks per embedding call and per store transaction.
        progress: show a tqdm progress bar (chunks) on stderr.
        max_tokens: chunk size in tokens; default the model's ``max_seq_length``.
        overlap: tokens shared by consecutive chunks.
        metadata: stored with every chunk (e.g. ``{"source": "pydoc"}``).
        titles: ``(document_id, text) -> title`` of the context line embedded with every chunk
            (:func:`file_title`, :func:`pydoc_title`); ``None``: no context.

    Returns:
        Counts and wall time; a document that cannot be cut into chunks is named in ``failed`` and left out.

    Raises:
        DimensionMismatchError: the table's vector dimension differs from the model's.
        RetryableError: the database became unavailable.
    """
    t0 = time.perf_counter()
    docs: Sequence[tuple[str, str]] = list(documents)
    limit = max_tokens or embedder.max_seq_length
    store.ensure_schema(embedder.model_name)
    chunks: list[Chunk] = []
    per_doc: dict[str, int] = {}
    failed: dict[str, str] = {}
    for doc_id, text in docs:
        title = titles(doc_id, text) if titles is not None else ""
        try:
            cut = chunk_text(
                doc_id, text, embedder.tokenizer, max_tokens=limit, overlap=overlap, metadata=metadata, title=title
            )
        except ValueError as exc:  # this document only; the others go on
            logger.warning("document not ingested document_id=%s: %s", doc_id, exc)
            failed[doc_id] = str(exc)
            continue
        per_doc[doc_id] = len(cut)
        chunks.extend(cut)
    existing = store.existing_hashes(sorted({c.document_id for c in chunks}))
    new_by_doc: dict[str, set[str]] = {}
    for c in chunks:
        new_by_doc.setdefault(c.document_id, set()).add(c.content_hash)
    old_by_doc: dict[str, set[str]] = {}
    for doc_id, digest in existing:
        old_by_doc.setdefault(doc_id, set()).add(digest)
    changed = sorted(d for d, old in old_by_doc.items() if old != new_by_doc.get(d, old))
    if changed:
        deleted = store.delete_documents(changed)
        logger.info("documents changed=%d: their %d old chunks deleted", len(changed), deleted)
        existing = {(d, h) for d, h in existing if d not in set(changed)}
    todo = [c for c in chunks if (c.document_id, c.content_hash) not in existing]
    inserted = 0
    with tqdm(total=len(todo), desc="embedding chunks", unit="chunk", disable=not progress) as bar:
        for i in range(0, len(todo), batch_size):
            batch = todo[i : i + batch_size]
            result = embedder.encode([c.embedded_text for c in batch])
            inserted += store.upsert([c.to_row(v) for c, v in zip(batch, result.vectors, strict=True)])
            bar.update(len(batch))
    report = IngestReport(
        documents=len(docs),
        chunks=len(chunks),
        inserted=inserted,
        skipped=len(chunks) - inserted,
        seconds=time.perf_counter() - t0,
        chunks_by_document=per_doc,
        failed=failed,
    )
    logger.info(
        "ingest done documents=%d chunks=%d inserted=%d skipped=%d seconds=%.1f table=%s",
        report.documents,
        report.chunks,
        report.inserted,
        report.skipped,
        report.seconds,
        store.table,
    )
    return report


def summary_rows(read: FolderDocuments, report: IngestReport) -> list[tuple[str, str, str, str, str]]:
    """One row per file for the end-of-run table: ``(file, result, encoding, chunks, reason or note)``.

    ``result`` is ``ingested`` or ``rejected`` (a file rejected while reading, or one ingestion could not cut).
    """
    rows: list[tuple[str, str, str, str, str]] = []
    for f in read.files:
        failed = report.failed.get(f.document_id)
        if f.accepted and failed is None:
            chunks = str(report.chunks_by_document.get(f.document_id, 0))
            rows.append((f.document_id, "ingested", f.encoding or "", chunks, f.reason))
        else:
            rows.append((f.document_id, "rejected", f.encoding or "", "-", failed or f.reason))
    return rows
