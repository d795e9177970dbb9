"""Reading documents for ingestion: a folder (or one file) of text files, each accepted or rejected on its own
with the reason, and Python's reference docs (the sample corpus).

A file with another suffix than :data:`TEXT_SUFFIXES`, one that cannot be read, one whose encoding is neither
UTF-8 nor detected by charset-normalizer, or one with a NUL character (binary; PostgreSQL text cannot hold it) is
rejected and the others are read. Hidden files and folders (``.git``) are counted and left out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from charset_normalizer import from_bytes

from workers.contracts.errors import ConfigError

logger = logging.getLogger(__name__)

#: Candidates of charset detection this close to the least chaotic one (mess ratio 0-1) count as ties.
_CHAOS_MARGIN = 0.05
#: Legacy encodings preferred among near ties, most common first (Python codec names, as charset-normalizer's).
_COMMON_ENCODINGS = (
    "cp1252", "latin_1", "cp1251", "cp1250", "iso8859_2", "iso8859_15", "cp1253", "cp1254", "cp1257", "koi8_r",
    "shift_jis", "cp932", "euc_jp", "gb18030", "gb2312", "big5", "euc_kr", "cp949", "utf_16", "utf_32",
)  # fmt: skip
#: Text file suffixes read by :func:`path_documents`.
TEXT_SUFFIXES = (".txt", ".md", ".rst")


def python_docs_documents() -> list[tuple[str, str]]:
    """Python's reference documentation topics shipped with the interpreter (``pydoc_data.topics``).

    Returns:
        ``(topic, text)`` pairs sorted by topic (79 on CPython 3.11), e.g. ``("with", "The "with" statement…")``.
    """
    from pydoc_data.topics import topics

    return sorted((str(k), str(v)) for k, v in topics.items())


@dataclass(frozen=True)
class FileResult:
    """What became of one file of a folder given to :func:`read_documents`.

    Attributes:
        document_id: the path relative to the folder (POSIX form), the document id when accepted.
        accepted: read as text (it is ingested), else rejected.
        encoding: the text encoding it was decoded with (``utf-8``, or what charset-normalizer detected).
        reason: why it was rejected, or a note on an accepted file (``not UTF-8: decoded as cp1252``).
        size: bytes of the file.
    """

    document_id: str
    accepted: bool
    encoding: str | None = None
    reason: str = ""
    size: int = 0


@dataclass(frozen=True)
class FolderDocuments:
    """The documents read from a folder (or one file) and what became of each file.

    Attributes:
        documents: ``(document_id, text)`` of the accepted files, sorted by id.
        files: every file considered, accepted or rejected, sorted by id.
        hidden: hidden files and folders (names starting with ``.``) left out.
    """

    documents: list[tuple[str, str]]
    files: list[FileResult]
    hidden: int = 0

    @property
    def rejected(self) -> list[FileResult]:
        """The files that were not ingested."""
        return [f for f in self.files if not f.accepted]


def _detect(data: bytes) -> tuple[str, str] | None:
    """``(text, encoding)`` of bytes that are not UTF-8, by charset-normalizer; ``None`` when it finds none.

    On short texts the detector's first choice is often one of several near ties (French Latin-1 text comes out
    as mac_latin2 with "ť" for "é", German as mac_iceland). So among the candidates whose chaos (mess ratio) is
    within :data:`_CHAOS_MARGIN` of the least, the first of :data:`_COMMON_ENCODINGS` that one of them could be is
    taken (cp1252, a superset of Latin-1, first); else the detector's choice. Still a best guess on a few words:
    the summary of ``ragstream ingest`` shows the encoding used.
    """
    matches = list(from_bytes(data))
    if not matches:
        return None
    least = min(m.chaos for m in matches)
    near = [m for m in matches if m.chaos <= least + _CHAOS_MARGIN]
    for encoding in _COMMON_ENCODINGS:
        for m in near:
            if encoding in m.could_be_from_charset:
                try:
                    return data.decode(encoding), encoding
                except (UnicodeDecodeError, LookupError):
                    return str(m), str(m.encoding)
    return str(matches[0]), str(matches[0].encoding)


def read_text(document_id: str, data: bytes) -> tuple[str | None, FileResult]:
    """Decode one file's bytes: UTF-8 (a BOM is dropped), else the encoding charset-normalizer detects.

    Returns:
        ``(text, result)``; ``text`` is ``None`` when the file is rejected (``result.reason`` says why).
    """
    size = len(data)
    note = ""
    try:
        text, encoding = data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as exc:
        found = _detect(data)
        if found is None:
            reason = f"not UTF-8 ({exc.reason} at byte {exc.start}) and no other text encoding detected"
            return None, FileResult(document_id, False, None, reason, size)
        text, encoding = found
        note = f"not UTF-8: decoded as {encoding}"
    nul = text.find("\x00")
    if nul >= 0:
        reason = f"NUL character at offset {nul} ({encoding}): a binary file, or UTF-16/32 without a byte-order mark"
        return None, FileResult(document_id, False, encoding, reason, size)
    if not text.strip():
        note = "empty: no chunks"
    return text, FileResult(document_id, True, encoding, note, size)


def read_documents(path: str | Path) -> FolderDocuments:
    """Text documents under a folder (or one file), each file accepted or rejected on its own.

    In a folder (searched recursively) every file is considered: one whose suffix is not in
    :data:`TEXT_SUFFIXES` is rejected (named, with the reason), as is one that cannot be read or decoded
    (:func:`read_text`); hidden files and folders are left out and counted. A single file is read whatever its
    suffix.

    Args:
        path: a folder or a single file.

    Returns:
        The accepted documents (id = path relative to ``path``, POSIX form; the file name for a single file) and
        a :class:`FileResult` per file.

    Raises:
        ConfigError: the path does not exist.
    """
    root = Path(path).expanduser()
    if root.is_file():
        paths, base, hidden = [root], root.parent, 0
    elif root.is_dir():
        paths, base, hidden = [], root, 0
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root).parts
            if any(part.startswith(".") for part in rel):
                hidden += 1 if p.name.startswith(".") else 0
                continue
            if p.is_file():
                paths.append(p)
    else:
        raise ConfigError(f"no such file or folder: {root}")
    docs: list[tuple[str, str]] = []
    files: list[FileResult] = []
    for p in paths:
        doc_id = p.relative_to(base).as_posix()
        if root.is_dir() and p.suffix.lower() not in TEXT_SUFFIXES:
            what = p.suffix.lower() or "no suffix"
            reason = f"not a text document ({what}); ingested suffixes: {', '.join(TEXT_SUFFIXES)}"
            files.append(FileResult(doc_id, False, None, reason, _size(p)))
            continue
        try:
            data = p.read_bytes()
        except OSError as exc:
            files.append(FileResult(doc_id, False, None, f"cannot be read: {exc.strerror or exc}", 0))
            continue
        text, result = read_text(doc_id, data)
        files.append(result)
        if text is None:
            logger.warning("file rejected document_id=%s: %s", doc_id, result.reason)
            continue
        if result.reason.startswith("not UTF-8"):
            logger.warning("file decoded document_id=%s: %s", doc_id, result.reason)
        docs.append((doc_id, text))
    return FolderDocuments(docs, files, hidden)


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def path_documents(path: str | Path) -> list[tuple[str, str]]:
    """The accepted text documents under a folder, or one file (:func:`read_documents`, rejected files left out).

    Returns:
        ``(document_id, text)`` pairs sorted by id.

    Raises:
        ConfigError: the path does not exist.
    """
    return read_documents(path).documents
