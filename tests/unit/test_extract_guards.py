"""Every extraction guard ends in a PermanentError a person can act on."""

from __future__ import annotations

import io
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from handlers.assets.formats import docx as docx_format
from handlers.assets.formats import open_document
from handlers.errors import PermanentError
from tests.support.documents import (
    DOCX_MIME,
    W_NS,
    docx_bytes,
    docx_from_xml,
    entity_expansion_docx,
    pdf_bytes,
    zip_bomb_docx,
)
from tests.support.policies import EXTRACT
from tests.unit.test_extract_formats import extract

PDF = "application/pdf"


def _open(tmp_path: Path, body: bytes, mime: str, **policy: float) -> list[str]:
    path = tmp_path / "file"
    path.write_bytes(body)
    return [p.text for p in open_document(path, mime, replace(EXTRACT, **policy)).pages]


def _refused(tmp_path: Path, body: bytes, mime: str, **policy: float) -> str:
    with pytest.raises(PermanentError) as caught:
        _open(tmp_path, body, mime, **policy)
    message = str(caught.value)
    assert "Traceback" not in message and "\n" not in message
    return message


def test_a_pdf_needing_a_password_is_refused(tmp_path: Path) -> None:
    body = pdf_bytes(2, owner_password="owner", user_password="reader")
    assert _refused(tmp_path, body, PDF).startswith("PDF is encrypted")


def test_a_damaged_pdf_is_refused(tmp_path: Path) -> None:
    body = b"%PDF-1.7\n" + bytes(range(256)) * 20
    assert _refused(tmp_path, body, PDF).startswith("PDF is damaged and cannot be read")


def test_a_truncated_pdf_is_refused_or_read_without_crashing(tmp_path: Path) -> None:
    body = pdf_bytes(3)
    try:
        _open(tmp_path, body[: len(body) // 2], PDF)
    except PermanentError as exc:
        assert "PDF" in str(exc)


def test_a_pdf_over_the_page_cap_is_refused(tmp_path: Path) -> None:
    assert _refused(tmp_path, pdf_bytes(5), PDF, max_pages=3) == "PDF has 5 pages; limit is 3"


def test_a_pdf_without_text_is_refused_when_extracted(tmp_path: Path) -> None:
    path = tmp_path / "scan.pdf"
    path.write_bytes(pdf_bytes(2, blank=True))
    with pytest.raises(PermanentError, match=r"no extractable text.*OCR is not supported"):
        extract(tmp_path, path, PDF)


@pytest.mark.parametrize("mime", [PDF, "text/plain", DOCX_MIME, "application/json"])
def test_an_empty_file_is_refused(tmp_path: Path, mime: str) -> None:
    assert _refused(tmp_path, b"", mime) == "file is empty: no text to index"


@pytest.mark.parametrize(
    ("body", "mime", "message"),
    [
        (b"just text", PDF, "file declared as application/pdf is not a PDF"),
        (b"PK\x03\x04zip", PDF, "file declared as application/pdf is not a PDF; it looks like"),
        (b"%PDF-1.4 ...", "text/plain", "file declared as text/plain is a PDF, not text"),
        (b"%PDF-1.4 ...", DOCX_MIME, f"file declared as {DOCX_MIME} is not a Word document"),
        (b"\x89PNG\r\n", "text/csv", "file declared as text/csv is a PNG image, not text"),
        (b"abc\x00\x01def", "text/markdown", "contains binary data, not text"),
    ],
)
def test_bytes_contradicting_the_declared_type_are_refused(
    tmp_path: Path, body: bytes, mime: str, message: str
) -> None:
    assert message in _refused(tmp_path, body, mime)


def test_a_password_protected_docx_is_recognised(tmp_path: Path) -> None:
    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(100)
    assert _refused(tmp_path, ole, DOCX_MIME).startswith("DOCX is password-protected")


@pytest.mark.parametrize(
    ("mime", "message"),
    [
        ("image/png", "unsupported file type 'image/png'"),
        ("application/msword", "legacy Word .doc files are not supported"),
    ],
)
def test_unsupported_types_are_refused(tmp_path: Path, mime: str, message: str) -> None:
    assert _refused(tmp_path, b"data", mime).startswith(message)


def test_a_highly_compressed_docx_part_is_refused_as_a_bomb(tmp_path: Path) -> None:
    message = _refused(tmp_path, zip_bomb_docx(8 * 2**20), DOCX_MIME)
    assert message.startswith("DOCX part word/media/blob.bin is compressed")
    assert "limit is 100:1 (a decompression bomb?)" in message


def test_a_docx_expanding_past_the_size_limit_is_refused(tmp_path: Path) -> None:
    body = zip_bomb_docx(3 * 2**20, compressible=False)
    message = _refused(tmp_path, body, DOCX_MIME, max_unpacked_bytes=2**20)
    assert message == "DOCX expands to 3 MB; limit is 1 MB"


def test_a_zip_that_is_not_a_word_document_is_refused(tmp_path: Path) -> None:
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("readme.txt", "hello")
    assert "has no word/document.xml" in _refused(tmp_path, out.getvalue(), DOCX_MIME)


def test_a_damaged_docx_is_refused(tmp_path: Path) -> None:
    body = docx_bytes(2)
    assert _refused(tmp_path, body[:200], DOCX_MIME).startswith("DOCX is damaged")


def test_invalid_json_says_where(tmp_path: Path) -> None:
    message = _refused(tmp_path, b'{"a": 1,\n "b": }', "application/json")
    assert message.startswith("JSON is invalid at line 2, column 7")


def test_a_docx_declaring_entities_is_refused_before_anything_expands(tmp_path: Path) -> None:
    """Entity expansion: a ~1 KB DOCX whose document.xml becomes 7.6 M characters.

    Before this guard it was extracted into ~16,000 chunks (each one then
    embedded and sent to the LLM). Word never writes a DOCTYPE.
    """
    body = entity_expansion_docx()
    assert len(body) < 1500
    path = tmp_path / "laughs.docx"
    path.write_bytes(body)
    with pytest.raises(PermanentError) as caught:
        extract(tmp_path, path, DOCX_MIME)
    assert str(caught.value) == (
        "DOCX part word/document.xml declares a DOCTYPE or entities, which Word never"
        " writes; refused (an entity-expansion attack?)"
    )


@pytest.mark.parametrize("part", ["word/styles.xml", "word/footnotes.xml", "word/_rels/x.rels"])
def test_a_doctype_in_any_xml_part_is_refused(tmp_path: Path, part: str) -> None:
    document = (
        f'<?xml version="1.0"?><w:document xmlns:w="{W_NS}"><w:body><w:p><w:r>'
        "<w:t>fine</w:t></w:r></w:p></w:body></w:document>"
    )
    evil = '<?xml version="1.0"?>\n<!-- x --><!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>'
    message = _refused(tmp_path, docx_from_xml(document, **{part: evil}), DOCX_MIME)
    assert message.startswith(f"DOCX part {part} declares a DOCTYPE or entities")


def test_a_doctype_in_utf16_is_refused_too(tmp_path: Path) -> None:
    evil = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>'
    body = docx_from_xml(evil.encode("utf-16"))
    message = _refused(tmp_path, body, DOCX_MIME)
    assert message.startswith("DOCX part word/document.xml declares a DOCTYPE")


def test_text_past_the_character_cap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "long.txt"
    path.write_text(("word " * 100 + "\n\n") * 50)  # 25,100 characters
    with pytest.raises(PermanentError) as caught:
        extract(tmp_path, path, "text/plain", max_chars=10_000)
    assert str(caught.value) == ("document has more than 10000 characters of text; limit is 10000")


def test_text_past_the_chunk_cap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "long.txt"
    path.write_text(("word " * 100 + "\n\n") * 50)  # ~52 chunks of 600 characters
    with pytest.raises(PermanentError) as caught:
        extract(tmp_path, path, "text/plain", max_chunks=20)
    assert str(caught.value) == "document makes more than 20 chunks; limit is 20"


def _docx_with_main_part(name: str, main: str, document: str) -> bytes:
    """A DOCX whose package relationship names ``name`` as the main part (mammoth reads
    it), while a ``word/document.xml`` is there too."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/'
            '2006/content-types"><Default Extension="xml" ContentType="application/xml"/>'
            "</Types>",
        )
        archive.writestr(
            "_rels/.rels",
            '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/'
            'package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.'
            "openxmlformats.org/officeDocument/2006/relationships/officeDocument"
            f'" Target="{name}"/></Relationships>',
        )
        archive.writestr("word/document.xml", document)
        archive.writestr(name, main)
    return out.getvalue()


def _document(text: str) -> str:
    return (
        f'<?xml version="1.0"?><w:document xmlns:w="{W_NS}"><w:body><w:p><w:r>'
        f"<w:t>{text}</w:t></w:r></w:p></w:body></w:document>"
    )


def test_a_doctype_in_a_main_part_of_any_name_is_refused(tmp_path: Path) -> None:
    """Issue 19: ``_rels/.rels`` sent mammoth to ``word/main.dat``, which the guard (only
    ``*.xml``/``*.rels``) never looked at: ~500 bytes became 1,000,000 characters."""
    laughs = "".join(f'<!ENTITY a{i} "{f"&a{i - 1};" * 10}">' for i in range(1, 6))
    main = f'<?xml version="1.0"?><!DOCTYPE w:document [<!ENTITY a0 "laugh">{laughs}]>' + _document(
        "&a5;"
    ).removeprefix('<?xml version="1.0"?>')
    body = _docx_with_main_part("word/main.dat", main, _document("fine"))
    message = _refused(tmp_path, body, DOCX_MIME)
    assert message.startswith("DOCX part word/main.dat declares a DOCTYPE or entities")


def test_every_xml_part_counts_in_the_size_that_picks_the_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large main part not named *.xml went to mammoth (which holds 25-60x its size in
    memory): it counts now, so the document goes to the streaming reader."""
    monkeypatch.setattr(docx_format, "MAMMOTH_MAX_XML_BYTES", 4096)
    big = _document("from the main part " * 400)
    body = _docx_with_main_part("word/main.dat", big, _document("from document.xml"))
    path = tmp_path / "big.docx"
    path.write_bytes(body)
    text = "".join(page.text for page in docx_format.docx_pages(path, EXTRACT))
    assert "from document.xml" in text and "from the main part" not in text
    # an image is no XML: it does not push a small document off mammoth
    with_image = _docx_with_main_part("word/media/i.png", "\x89PNG" + "x" * 8000, big[:3000])
    _, xml_parts = docx_format.inspect_archive(_written(tmp_path, with_image), EXTRACT)
    assert "word/media/i.png" not in {i.filename for i in xml_parts}


def _written(tmp_path: Path, body: bytes) -> Path:
    path = tmp_path / "doc.docx"
    path.write_bytes(body)
    return path
