"""Reading a mixed folder for ingestion: each file accepted or rejected on its own, encodings detected (issue 14 #6)."""

from __future__ import annotations

from pathlib import Path

from workers.retriever.documents import path_documents, read_documents, read_text
from workers.retriever.ingest import IngestReport, summary_rows

FRENCH = (
    "Le café de la gare était fermé. Hélène a préféré rentrer à pied, malgré la pluie.\n"
    "Les élèves ont étudié la leçon sur les châteaux de la Loire. À côté, un garçon lisait.\n"
)


def _mixed(folder: Path) -> None:
    (folder / "sub").mkdir()
    (folder / ".git").mkdir()
    (folder / "good.txt").write_text("The pass statement does nothing.", encoding="utf-8")
    (folder / "bom.md").write_bytes(b"\xef\xbb\xbf# Title\n\nWith a byte-order mark.")
    (folder / "latin1.txt").write_bytes(FRENCH.encode("latin-1"))
    (folder / "sub" / "nul.txt").write_bytes(b"text before\x00 and after a NUL byte")
    (folder / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10")
    (folder / "notes").write_text("no suffix", encoding="utf-8")
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main", encoding="utf-8")
    (folder / ".hidden.txt").write_text("hidden", encoding="utf-8")


def test_each_file_of_a_mixed_folder_is_accepted_or_rejected_on_its_own(tmp_path: Path) -> None:
    _mixed(tmp_path)
    read = read_documents(tmp_path)
    by_id = {f.document_id: f for f in read.files}
    assert sorted(by_id) == ["bom.md", "good.txt", "image.png", "latin1.txt", "notes", "sub/nul.txt"]
    assert read.hidden == 2  # .git and .hidden.txt, left out
    assert [d for d, _ in read.documents] == ["bom.md", "good.txt", "latin1.txt"]
    docs = dict(read.documents)
    assert docs["bom.md"].startswith("# Title") and by_id["bom.md"].encoding == "utf-8"
    assert docs["latin1.txt"] == FRENCH  # decoded, not replacement characters
    assert by_id["latin1.txt"].encoding == "cp1252" and "not UTF-8" in by_id["latin1.txt"].reason
    assert not by_id["sub/nul.txt"].accepted and "NUL character at offset 11" in by_id["sub/nul.txt"].reason
    assert not by_id["image.png"].accepted and "not a text document (.png)" in by_id["image.png"].reason
    assert not by_id["notes"].accepted and "(no suffix)" in by_id["notes"].reason
    assert [f.document_id for f in read.rejected] == ["image.png", "notes", "sub/nul.txt"]
    # the older entry point gives the accepted documents only
    assert path_documents(tmp_path) == read.documents


def test_bytes_that_are_no_text_encoding_are_rejected_with_the_reason() -> None:
    text, result = read_text("random.txt", bytes(range(256)) * 8)
    assert text is None and not result.accepted and "not UTF-8" in result.reason


def test_summary_rows_name_every_file_and_documents_that_could_not_be_cut(tmp_path: Path) -> None:
    _mixed(tmp_path)
    read = read_documents(tmp_path)
    report = IngestReport(
        documents=3,
        chunks=2,
        inserted=2,
        skipped=0,
        seconds=0.1,
        chunks_by_document={"good.txt": 1, "latin1.txt": 1},
        failed={"bom.md": "cannot cut 'bom.md' into chunks of 4 tokens"},
    )
    rows = {r[0]: r for r in summary_rows(read, report)}
    assert rows["good.txt"] == ("good.txt", "ingested", "utf-8", "1", "")
    assert rows["latin1.txt"][1:4] == ("ingested", "cp1252", "1")
    assert rows["bom.md"][1] == "rejected" and "cannot cut" in rows["bom.md"][4]
    assert rows["sub/nul.txt"][1] == "rejected" and "NUL" in rows["sub/nul.txt"][4]
