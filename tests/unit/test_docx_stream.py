"""The streaming DOCX reader gives the text mammoth gives, with memory that does not grow."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import docx
import pytest
from docx.enum.text import WD_BREAK

from handlers.assets.chunking import PAGE_SEPARATOR
from handlers.assets.formats import docx as docx_format
from handlers.assets.formats.docx_stream import stream_pages
from handlers.errors import PermanentError
from tests.support.documents import W_NS, docx_bytes, docx_from_xml, docx_words
from tests.support.policies import EXTRACT

SAMPLES = Path(__file__).resolve().parents[2] / "docs" / "samples"


def rich_docx() -> bytes:
    """Headings, nested and numbered lists, tables with merged cells, breaks, tabs, links."""
    document = docx.Document()
    document.add_heading("Annual Plan", level=0)
    document.add_heading("Scope", level=1)
    document.add_paragraph("Tabs\tand  spaces & <angle> brackets.")
    para = document.add_paragraph("line one")
    para.add_run().add_break()
    para.add_run("line two")
    para.add_run().add_break(WD_BREAK.PAGE)
    para.add_run("after the page break")
    for style, text in [
        ("List Bullet", "top bullet"),
        ("List Bullet 2", "nested bullet"),
        ("List Bullet 2", "second nested"),
        ("List Bullet", "back to top"),
        ("List Number", "first step"),
        ("List Number", "second step"),
        ("List Number 2", "sub step"),
        ("List Number", "third step"),
    ]:
        document.add_paragraph(text, style=style)
    document.add_paragraph("")
    document.add_heading("Numbers", level=2)
    table = document.add_table(rows=3, cols=3)
    for r in range(3):
        for c in range(3):
            table.cell(r, c).text = f"r{r}c{c}"
    table.cell(0, 0).merge(table.cell(0, 1))
    table.cell(1, 2).merge(table.cell(2, 2))
    table.cell(2, 0).add_paragraph("second paragraph in a cell")
    document.add_heading("Deep", level=3)
    document.add_paragraph("closing words")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def hand_written_docx() -> bytes:
    """Markup python-docx does not write: revisions, fields, alternate content, controls."""
    mc = "http://schemas.openxmlformats.org/markup-compatibility/2006"
    body = (
        "<w:p><w:r><w:t xml:space='preserve'>kept </w:t></w:r>"
        "<w:del><w:r><w:delText>deleted</w:delText></w:r></w:del>"
        "<w:ins><w:r><w:t>inserted</w:t></w:r></w:ins></w:p>"
        "<w:p><w:r><w:fldChar w:fldCharType='begin'/></w:r>"
        '<w:r><w:instrText>HYPERLINK "x"</w:instrText></w:r>'
        "<w:r><w:fldChar w:fldCharType='separate'/></w:r><w:r><w:t>field result</w:t></w:r>"
        "<w:r><w:fldChar w:fldCharType='end'/></w:r></w:p>"
        f"<w:p><mc:AlternateContent xmlns:mc='{mc}'><mc:Choice Requires='x'><w:r><w:t>choice"
        "</w:t></w:r></mc:Choice><mc:Fallback><w:r><w:t>fallback</w:t></w:r></mc:Fallback>"
        "</mc:AlternateContent></w:p>"
        "<w:sdt><w:sdtContent><w:p><w:r><w:t>in a control</w:t></w:r></w:p></w:sdtContent></w:sdt>"
        "<w:p><w:hyperlink><w:r><w:t>linked</w:t></w:r></w:hyperlink><w:r><w:t>non</w:t>"
        "<w:noBreakHyphen/><w:t>breaking</w:t><w:softHyphen/><w:t>x</w:t></w:r></w:p>"
        "<w:p><w:pPr><w:pStyle w:val='Heading2'/></w:pPr><w:r><w:t>Heading by id</w:t></w:r></w:p>"
    )
    xml = f'<w:document xmlns:w="{W_NS}"><w:body>{body}<w:sectPr/></w:body></w:document>'
    return docx_from_xml(xml)


def numbered_docx() -> bytes:
    """Lists nested by ``w:ilvl`` through numbering.xml, bullets over numbers, in a table too."""

    def item(num: int, level: int, text: str) -> str:
        return (
            f"<w:p><w:pPr><w:numPr><w:ilvl w:val='{level}'/><w:numId w:val='{num}'/></w:numPr>"
            f"</w:pPr><w:r><w:t>{text}</w:t></w:r></w:p>"
        )

    items = [(1, 0, "fruit"), (1, 1, "apple"), (1, 1, "pear"), (1, 2, "deep"), (1, 0, "veg")]
    body = "".join(item(*i) for i in items) + "<w:p><w:r><w:t>plain</w:t></w:r></w:p>"
    body += "<w:tbl><w:tr><w:tc>" + item(2, 0, "in cell") + "</w:tc><w:tc>"
    body += item(2, 0, "other") + "</w:tc></w:tr></w:tbl>" + item(2, 0, "after")
    levels = "".join(
        f"<w:lvl w:ilvl='{n}'><w:numFmt w:val='{fmt}'/></w:lvl>"
        for n, fmt in enumerate(["bullet", "decimal", "bullet"])
    )
    numbering = (
        f'<w:numbering xmlns:w="{W_NS}"><w:abstractNum w:abstractNumId="0">{levels}'
        '</w:abstractNum><w:abstractNum w:abstractNumId="1"><w:lvl w:ilvl="0">'
        '<w:numFmt w:val="decimal"/></w:lvl></w:abstractNum><w:num w:numId="1">'
        '<w:abstractNumId w:val="0"/></w:num><w:num w:numId="2"><w:abstractNumId w:val="1"/>'
        "</w:num></w:numbering>"
    )
    xml = f'<w:document xmlns:w="{W_NS}"><w:body>{body}</w:body></w:document>'
    return docx_from_xml(xml, **{"word/numbering.xml": numbering})


def _stream_text(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        pages = stream_pages(archive, set(archive.namelist()), 10**9)
        return PAGE_SEPARATOR.join(p.text for p in pages)


def _mammoth_text(path: Path) -> str:
    return PAGE_SEPARATOR.join(p.text for p in docx_format._mammoth_pages(path))


@pytest.mark.parametrize(
    "make",
    [
        lambda: docx_bytes(3),
        rich_docx,
        hand_written_docx,
        numbered_docx,
        lambda: docx_words(30_000),
        lambda: (SAMPLES / "runbook.docx").read_bytes(),
    ],
    ids=["report", "rich", "hand-written", "numbered", "30k-words", "sample"],
)
def test_the_stream_reader_gives_mammoths_text(tmp_path: Path, make: object) -> None:
    assert callable(make)
    path = tmp_path / "a.docx"
    path.write_bytes(make())
    expected = _mammoth_text(path)
    assert _stream_text(path) == expected
    assert len(expected) > 50


def test_headings_and_nested_lists_keep_their_structure(tmp_path: Path) -> None:
    path = tmp_path / "a.docx"
    path.write_bytes(rich_docx())
    lines = _stream_text(path).splitlines()
    assert "# Scope" in lines and "## Numbers" in lines and "### Deep" in lines
    assert "- top bullet" in lines and "4. third step" in lines
    path.write_bytes(numbered_docx())
    assert _stream_text(path).splitlines()[:6] == [
        "- fruit",
        "  1. apple",
        "  2. pear",
        "    - deep",
        "- veg",
        "",
    ]


def test_notes_follow_the_body_in_the_streaming_reader(tmp_path: Path) -> None:
    body = (
        "<w:p><w:r><w:t>Claim</w:t></w:r><w:r><w:footnoteReference w:id='2'/></w:r></w:p>"
        "<w:p><w:r><w:t>End of body.</w:t></w:r></w:p>"
    )
    notes = (
        f'<w:footnotes xmlns:w="{W_NS}"><w:footnote w:id="0"><w:p><w:r><w:t>separator</w:t>'
        "</w:r></w:p></w:footnote><w:footnote w:id='2'><w:p><w:r><w:t>The source.</w:t>"
        "</w:r></w:p></w:footnote></w:footnotes>"
    )
    xml = f'<w:document xmlns:w="{W_NS}"><w:body>{body}</w:body></w:document>'
    path = tmp_path / "notes.docx"
    path.write_bytes(docx_from_xml(xml, **{"word/footnotes.xml": notes}))
    assert _stream_text(path) == "Claim[1]\n\nEnd of body.\n\n1. The source."


def test_large_documents_take_the_streaming_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "a.docx"
    path.write_bytes(rich_docx())
    monkeypatch.setattr(docx_format, "MAMMOTH_MAX_XML_BYTES", 1000)
    monkeypatch.setattr(docx_format, "_mammoth_pages", None)  # would fail if called
    text = PAGE_SEPARATOR.join(p.text for p in docx_format.docx_pages(path, EXTRACT))
    assert text.startswith("Annual Plan\n\n# Scope")


def test_the_streaming_path_applies_the_character_cap_as_it_reads(tmp_path: Path) -> None:
    path = tmp_path / "a.docx"
    path.write_bytes(docx_words(30_000))
    with zipfile.ZipFile(path) as archive:
        pages = stream_pages(archive, set(archive.namelist()), 100_000)
        with pytest.raises(PermanentError, match="more than 100000 characters"):
            for _ in pages:
                pass


def test_an_element_with_endless_properties_is_refused(tmp_path: Path) -> None:
    props = "<w:pPr>" + "<w:spacing/>" * 20_000 + "</w:pPr>"
    xml = f'<w:document xmlns:w="{W_NS}"><w:body><w:p>{props}</w:p></w:body></w:document>'
    path = tmp_path / "a.docx"
    path.write_bytes(docx_from_xml(xml))
    with pytest.raises(PermanentError, match="more than 10000 properties"):
        _stream_text(path)
