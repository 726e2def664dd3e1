"""Each format turns into the expected text; chunks written by extraction read back intact."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from handlers.assets.chunking import PAGE_SEPARATOR, Page, chunk_pages
from handlers.assets.extract import ExtractRequest, ExtractSummary, extract_to_file, read_chunks
from handlers.assets.formats import open_document
from handlers.assets.formats.html import html_to_text
from handlers.assets.formats.text import split_text
from handlers.deps import ExtractPolicy
from tests.support.documents import DOCX_MIME, docx_bytes, pdf_bytes
from tests.support.policies import CHUNKING, EXTRACT

POLICY = EXTRACT


def _write(tmp_path: Path, name: str, body: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(body.encode() if isinstance(body, str) else body)
    return path


def _pages(path: Path, mime: str, policy: ExtractPolicy = POLICY) -> list[Page]:
    return list(open_document(path, mime, policy).pages)


def _text(path: Path, mime: str) -> str:
    return PAGE_SEPARATOR.join(p.text for p in _pages(path, mime))


def extract(tmp_path: Path, path: Path, mime: str, **policy: float) -> ExtractSummary:
    """``extract_to_file`` off the main thread (its timer would cancel pytest-timeout's)."""
    request = ExtractRequest(
        str(path),
        mime,
        str(tmp_path / "out.jsonl"),
        replace(EXTRACT, **policy),
        CHUNKING.size,
        CHUNKING.overlap,
    )
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(extract_to_file, request).result()


def test_pdf_is_read_page_by_page_with_page_numbers(tmp_path: Path) -> None:
    pages = _pages(_write(tmp_path, "a.pdf", pdf_bytes(3)), "application/pdf")
    assert [p.number for p in pages] == [1, 2, 3]
    assert all(f"page {p.number} marker" in p.text for p in pages)


@pytest.mark.parametrize("aes", [False, True], ids=["rc4", "aes256"])
def test_pdf_with_only_an_owner_password_opens_without_one(tmp_path: Path, aes: bool) -> None:
    body = pdf_bytes(2, owner_password="owner-secret", aes=aes)
    assert "page 2 marker" in _text(_write(tmp_path, "a.pdf", body), "application/pdf")


def test_docx_keeps_headings_and_lists_as_markdown_like_lines(tmp_path: Path) -> None:
    text = _text(_write(tmp_path, "a.docx", docx_bytes(3)), DOCX_MIME)
    lines = text.splitlines()
    assert lines[0] == "# Quarterly Report"
    assert "## Findings" in lines
    assert "- first finding" in lines and "- second finding" in lines
    assert "\\" not in text, "no markdown escaping in the indexed text"
    assert "body2 " in text


def test_html_becomes_text_without_scripts_styles_or_tags(tmp_path: Path) -> None:
    html = (
        "<html><head><title>Guide</title><style>p{color:red}</style>"
        "<script>var x = '<p>not text</p>';</script></head><body>"
        "<h2>Setup &amp; use</h2><p>First  <b>bold</b>\n text.</p><div>Block</div>"
        "<ol><li>one</li><li>two</li></ol><ul><li>dot</li></ul>"
        "<table><tr><th>k</th><th>v</th></tr><tr><td>a</td><td>1</td></tr></table>"
        "<pre>  keep   spacing</pre>line<br>break<!-- comment --></body></html>"
    )
    text = _text(_write(tmp_path, "a.html", html), "text/html; charset=utf-8")
    assert text == (
        "Guide\n\n## Setup & use\n\nFirst bold text.\n\nBlock\n\n1. one\n2. two\n\n- dot"
        "\n\nk | v\na | 1\n\n  keep   spacing\n\nline\nbreak"
    )


def test_nested_lists_are_indented() -> None:
    text = html_to_text("<ul><li>a<ul><li>b</li></ul></li><li>c</li></ul>")
    assert text.splitlines() == ["- a", "  - b", "- c"]


def test_csv_rows_become_lines_naming_their_columns(tmp_path: Path) -> None:
    body = "name,city,age\nAna,Lisbon,31\nBo,,40\n"
    text = _text(_write(tmp_path, "a.csv", body), "text/csv")
    assert text.splitlines() == ["name: Ana | city: Lisbon | age: 31", "name: Bo | age: 40"]


def test_json_is_flattened_to_path_value_lines(tmp_path: Path) -> None:
    body = json.dumps({"title": "Plan", "steps": [{"name": "a", "done": True}, {"name": "b"}]})
    text = _text(_write(tmp_path, "a.json", body), "application/json")
    assert text.splitlines() == [
        "title: Plan",
        "steps[0].name: a",
        "steps[0].done: true",
        "steps[1].name: b",
    ]


@pytest.mark.parametrize("mime", ["text/plain", "text/markdown"])
def test_text_and_markdown_are_kept_as_written(tmp_path: Path, mime: str) -> None:
    body = "# Title\n\nSome *text*.\n\n- item\n"
    assert _text(_write(tmp_path, "a.txt", body), mime) == body


def test_latin1_and_utf16_text_are_decoded(tmp_path: Path) -> None:
    assert _text(_write(tmp_path, "a.txt", "café".encode("latin-1")), "text/plain") == "café"
    assert _text(_write(tmp_path, "b.txt", "naïve".encode("utf-16")), "text/plain") == "naïve"


def test_long_text_is_split_into_pieces_that_join_back_exactly() -> None:
    text = "\n\n".join(f"para {i} " + "x" * (i % 50) for i in range(5000))
    pieces = list(split_text(text, piece_chars=1000))
    assert len(pieces) > 10
    assert PAGE_SEPARATOR.join(p.text for p in pieces) == text


def test_extraction_writes_the_same_chunks_as_chunking_the_whole_text(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.pdf", pdf_bytes(4, words_per_page=150))
    summary = extract(tmp_path, path, "application/pdf")
    written = [c for batch in read_chunks(tmp_path / "out.jsonl", 3) for c in batch]
    expected = chunk_pages(_pages(path, "application/pdf"), CHUNKING.size, CHUNKING.overlap)
    assert written == expected
    assert summary.chunks == len(expected) and summary.page_count == 4
    assert written[-1].char_end == summary.chars
    assert {c.page_start for c in written} == {1, 2, 3, 4}


def test_long_text_read_in_blocks_is_the_files_text(tmp_path: Path) -> None:
    body = "\r\n\n".join(f"para {i} naïve 😀 " + "x" * (i % 300) for i in range(4000))
    assert _text(_write(tmp_path, "a.txt", body.encode()), "text/plain") == body
    pages = _pages(tmp_path / "a.txt", "text/plain")
    assert len(pages) > 5, "read and handed on in pieces"
    latin = ("a" * 3_000_000 + "caf\xe9").encode("latin-1")  # the odd byte far past a block
    assert _text(_write(tmp_path, "b.txt", latin), "text/plain").endswith("café")


def test_long_html_parsed_in_blocks_gives_the_text_of_the_whole_page(tmp_path: Path) -> None:
    rows = "".join(
        f"<h2>Part {i}</h2><p>Some <b>bold</b> text &amp; more, naïve {i}</p>"
        f"<ul><li>one</li><li>two</li></ul><pre>  kept  {i}</pre>"
        for i in range(6000)
    )
    html = f"<html><body>{rows}</body></html>"
    text = _text(_write(tmp_path, "a.html", html), "text/html")
    assert text == html_to_text(html)
    assert len(_pages(tmp_path / "a.html", "text/html")) > 5


def test_csv_rows_are_read_as_needed(tmp_path: Path) -> None:
    body = "name,age\n" + "".join(f"n{i},{20 + i % 50}\n" for i in range(5000))
    lines = [
        line for line in _text(_write(tmp_path, "a.csv", body), "text/csv").splitlines() if line
    ]
    assert len(lines) == 5000 and lines[-1] == "name: n4999 | age: 69"


def test_json_over_its_size_limit_is_refused(tmp_path: Path) -> None:
    from handlers.assets.formats import text
    from handlers.errors import PermanentError

    path = _write(tmp_path, "a.json", "[" + ",".join(["1"] * 6_000_000) + "]")
    assert path.stat().st_size > text.JSON_MAX_BYTES
    with pytest.raises(PermanentError, match=r"JSON is 11 MB; JSON files over 8 MB"):
        _pages(path, "application/json")
