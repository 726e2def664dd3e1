"""PDF text comes from PDFium; pypdf (the engine before it) must agree on every sample."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from pypdf import PdfReader

from handlers.assets.extract import read_chunks
from handlers.assets.formats import open_document
from tests.support.documents import pdf_bytes, pdf_with_glyphs
from tests.support.policies import EXTRACT
from tests.unit.test_extract_formats import extract

PDF = "application/pdf"
SAMPLES = Path(__file__).resolve().parents[2] / "docs" / "samples"
ACCENTS = "Café naïve façade Ærøskøbing “quoted” \u2013 dash"
LIGATURES = b"\x80nal \x81oor ef\x80cient"  # fi, fl, fi glyphs


def glyph_pdf() -> bytes:
    return pdf_with_glyphs(
        [[ACCENTS.encode("cp1252"), LIGATURES], [b"page two \xe9t\xe9 r\xe9sum\xe9"]]
    )


def _comparable(text: str) -> str:
    """Ligature glyphs as letters (pypdf keeps U+FB01, PDFium expands it), spaces collapsed."""
    expanded = "".join(
        unicodedata.normalize("NFKC", ch) if "\ufb00" <= ch <= "\ufb06" else ch for ch in text
    )
    return re.sub(r"\s+", " ", expanded).strip()


def _documents(tmp_path: Path) -> list[Path]:
    generated = {
        "glyphs.pdf": glyph_pdf(),
        "three.pdf": pdf_bytes(3, words_per_page=300),
        "owner-only.pdf": pdf_bytes(2, owner_password="owner", aes=True),
    }
    paths = sorted(SAMPLES.glob("*.pdf"))
    assert paths, "the committed samples include a PDF"
    for name, body in generated.items():
        (tmp_path / name).write_bytes(body)
        paths.append(tmp_path / name)
    return paths


def test_pdfium_and_pypdf_give_the_same_text_on_every_sample(tmp_path: Path) -> None:
    for path in _documents(tmp_path):
        reader = PdfReader(path)
        if reader.is_encrypted:
            reader.decrypt("")
        expected = [_comparable(page.extract_text()) for page in reader.pages]
        pages = list(open_document(path, PDF, EXTRACT).pages)
        assert [p.number for p in pages] == list(range(1, len(expected) + 1)), path.name
        assert [_comparable(p.text) for p in pages] == expected, path.name
        assert all("\r" not in p.text for p in pages)


def test_accents_and_ligatures_survive(tmp_path: Path) -> None:
    path = tmp_path / "glyphs.pdf"
    path.write_bytes(glyph_pdf())
    first, second = open_document(path, PDF, EXTRACT).pages
    assert first.text.splitlines() == [ACCENTS, "final floor efficient"]
    assert second.text == "page two été résumé"


def test_chunks_keep_their_page_numbers(tmp_path: Path) -> None:
    path = tmp_path / "three.pdf"
    path.write_bytes(pdf_bytes(3, words_per_page=150))
    summary = extract(tmp_path, path, PDF)
    chunks = [c for batch in read_chunks(tmp_path / "out.jsonl", 100) for c in batch]
    assert summary.page_count == 3
    for number in (1, 2, 3):
        marked = [c for c in chunks if f"page {number} marker" in c.text]
        assert marked and all(c.page_start <= number == c.page_end for c in marked)  # type: ignore[operator]
    assert {c.page_start for c in chunks} == {1, 2, 3} and chunks[-1].page_end == 3
