"""DOCX: mammoth for ordinary documents, a streaming reader for large ones.

Every archive first passes the guards (a Word document, not encrypted,
within the unpacked-size and compression-ratio limits, no DOCTYPE in any part
an XML parser would read — whatever its name: mammoth follows
``_rels/.rels`` to a main part of any name). Mammoth offers raw text, HTML
and (deprecated) markdown. Raw text loses headings and list structure; its
markdown writer backslash-escapes ``.``, ``-``, ``(`` and the like, which
pollutes the indexed text ("3\\.5").
Its HTML output is the best-supported path and keeps headings, lists and
tables, so the document is converted to HTML and rendered with the same
HTML-to-text converter as HTML files: headings become ``#`` lines and list
items ``-``/``1.`` lines, with no escaping.

Mammoth holds the whole XML tree (25-60 bytes of memory per byte of XML), so a
document whose XML parts — every part that parses as XML, whatever its name —
exceed ``MAMMOTH_MAX_XML_BYTES`` (2 MiB: up to ~190 MB for mammoth) is read by
``docx_stream`` instead, which writes the same HTML from a stream of XML
events in bounded memory.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from xml.etree import ElementTree
from xml.parsers import expat

import mammoth

from handlers.assets.chunking import Page
from handlers.assets.formats.docx_stream import stream_pages
from handlers.assets.formats.html import html_to_text
from handlers.assets.formats.text import split_text
from handlers.deps import ExtractPolicy
from handlers.errors import PermanentError

DOCUMENT_PART = "word/document.xml"
RATIO_CHECK_MIN_BYTES = 1024 * 1024  # small parts may compress well without harm
MAX_PARTS = 10_000
MAMMOTH_MAX_XML_BYTES = 2 * 1024 * 1024  # mammoth needs 25-60x this in memory
NO_TEXT = "DOCX has no text to index"
PROLOG_BLOCK = 64 * 1024


def _mb(n: float) -> str:
    return f"{n / (1024 * 1024):.0f} MB"


def check_archive(path: Path, policy: ExtractPolicy) -> list[zipfile.ZipInfo]:
    """Refuse archives that are not Word documents or would expand too far."""
    return inspect_archive(path, policy)[0]


def inspect_archive(
    path: Path, policy: ExtractPolicy
) -> tuple[list[zipfile.ZipInfo], list[zipfile.ZipInfo]]:
    """The archive's parts and those of them that are XML, once the guards passed.

    Python's zipfile never inflates a member past the size its header
    declares, so checking the declared sizes bounds what mammoth can read.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise PermanentError("DOCX is damaged: it is not a readable ZIP archive") from None
    if DOCUMENT_PART not in {info.filename for info in infos}:
        raise PermanentError("file declared as DOCX has no word/document.xml: not a Word document")
    if len(infos) > MAX_PARTS:
        raise PermanentError(f"DOCX has {len(infos)} parts; limit is {MAX_PARTS}")
    if any(info.flag_bits & 0x1 for info in infos):
        raise PermanentError("DOCX is encrypted: remove the password and upload it again")
    total = sum(info.file_size for info in infos)
    if total > policy.max_unpacked_bytes:
        raise PermanentError(
            f"DOCX expands to {_mb(total)}; limit is {_mb(policy.max_unpacked_bytes)}"
        )
    for info in infos:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size >= RATIO_CHECK_MIN_BYTES and ratio > policy.max_compression_ratio:
            raise PermanentError(
                f"DOCX part {info.filename} is compressed {ratio:.0f}:1; limit is"
                f" {policy.max_compression_ratio:.0f}:1 (a decompression bomb?)"
            )
    return infos, _xml_parts_without_doctype(path, infos)


class _Doctype(Exception):
    pass


class _PrologEnd(Exception):
    pass


def _xml_parts_without_doctype(path: Path, infos: list[zipfile.ZipInfo]) -> list[zipfile.ZipInfo]:
    """The parts an XML parser would read; refuse the archive if one has a DOCTYPE.

    Entities can expand ~1 KB into millions of words, and Word never writes a
    DOCTYPE. Every part is looked at, not only ``*.xml``/``*.rels``: mammoth
    follows ``_rels/.rels`` to a main part of any name (``word/main.dat``).
    Only each part's prolog is read (a DOCTYPE must come before the root
    element), with expat — the parser mammoth uses — so every encoding is
    understood as it would be; a part expat refuses before any element (an
    image) is not XML to any parser here.
    """
    found = []
    with zipfile.ZipFile(path) as archive:
        for info in infos:
            kind = _prolog(archive, info)
            if kind == "doctype":
                raise PermanentError(
                    f"DOCX part {info.filename} declares a DOCTYPE or entities, which Word"
                    " never writes; refused (an entity-expansion attack?)"
                )
            if kind == "xml":
                found.append(info)
    return found


def _prolog(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
    """``doctype``, ``xml`` (its root element started) or ``other`` (no XML to expat)."""
    parser = expat.ParserCreate()

    def doctype(*_: object) -> None:
        raise _Doctype

    def root(*_: object) -> None:
        raise _PrologEnd

    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = doctype
    parser.StartElementHandler = root
    try:
        with archive.open(info) as part:
            while block := part.read(PROLOG_BLOCK):
                parser.Parse(block, False)
            parser.Parse(b"", True)
    except _Doctype:
        return "doctype"
    except _PrologEnd:
        return "xml"
    except expat.ExpatError:
        return "other"  # refused before any element: no parser here reads it as XML
    return "other"


def docx_pages(path: Path, policy: ExtractPolicy) -> Iterator[Page]:
    infos, xml_parts = inspect_archive(path, policy)
    xml_bytes = sum(i.file_size for i in xml_parts)
    if xml_bytes <= MAMMOTH_MAX_XML_BYTES:
        return _mammoth_pages(path)
    return _streamed_pages(path, {i.filename for i in infos}, policy)


def _mammoth_pages(path: Path) -> Iterator[Page]:
    try:
        with path.open("rb") as f:
            html = to_html(f)
    except (KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise PermanentError(f"DOCX is damaged and cannot be read ({_short(exc)})") from None
    except MemoryError:
        raise  # the process's memory ceiling: reported as such by the pool
    except Exception as exc:  # mammoth's XML and zip layers raise many types
        raise PermanentError(f"DOCX cannot be read ({_short(exc)})") from None
    text = html_to_text(html)
    del html
    if not text.strip():
        raise PermanentError(NO_TEXT)
    return split_text(text)


def to_html(docx: BinaryIO) -> str:
    """mammoth's HTML for the document; images are never opened (no external file access)."""
    result = mammoth.convert_to_html(docx, convert_image=_no_image, external_file_access=False)
    html: str = result.value
    return html


def _no_image(image: object) -> list[object]:
    """Mammoth's image converter: emit nothing and never open the image.

    Images carry no indexable text; opening one would read its bytes (base64
    into the HTML) or, for a linked image, a URL or local file (CVE-2025-11849).
    """
    return []


def _streamed_pages(path: Path, names: set[str], policy: ExtractPolicy) -> Iterator[Page]:
    has_text = False
    try:
        with zipfile.ZipFile(path) as archive:
            for page in stream_pages(archive, names, policy.max_chars):
                has_text = has_text or (not page.text.isspace() and bool(page.text))
                yield page
    except (ElementTree.ParseError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise PermanentError(f"DOCX is damaged and cannot be read ({_short(exc)})") from None
    if not has_text:
        raise PermanentError(NO_TEXT)


def _short(exc: BaseException) -> str:
    line = (str(exc).strip().splitlines() or [""])[0][:160]
    return line or type(exc).__name__
