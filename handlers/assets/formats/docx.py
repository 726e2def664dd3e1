"""DOCX through mammoth, after the archive passes the decompression-bomb guard.

Mammoth offers raw text, HTML and (deprecated) markdown. Raw text loses
headings and list structure; its markdown writer backslash-escapes ``.``,
``-``, ``(`` and the like, which pollutes the indexed text ("3\\.5"). Its
HTML output is the best-supported path and keeps headings, lists and
tables, so the document is converted to HTML and rendered with the same
HTML-to-text converter as HTML files: headings become ``#`` lines and list
items ``-``/``1.`` lines, with no escaping.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from xml.parsers import expat

import mammoth

from handlers.assets.chunking import Page
from handlers.assets.formats.html import html_to_text
from handlers.assets.formats.text import split_text
from handlers.deps import ExtractPolicy
from handlers.errors import PermanentError

DOCUMENT_PART = "word/document.xml"
RATIO_CHECK_MIN_BYTES = 1024 * 1024  # small parts may compress well without harm
MAX_PARTS = 10_000
PROLOG_BLOCK = 64 * 1024


def _mb(n: float) -> str:
    return f"{n / (1024 * 1024):.0f} MB"


def check_archive(path: Path, policy: ExtractPolicy) -> None:
    """Refuse archives that are not Word documents or would expand too far.

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
    _check_no_doctype(path, infos)


class _Doctype(Exception):
    pass


class _PrologEnd(Exception):
    pass


def _check_no_doctype(path: Path, infos: list[zipfile.ZipInfo]) -> None:
    """Refuse any XML part with a DOCTYPE: entities can expand ~1 KB into millions of words.

    Word never writes a DOCTYPE. Only each part's prolog is read (a DOCTYPE
    must come before the root element), with expat, so every encoding is
    understood as the parsers would understand it.
    """
    with zipfile.ZipFile(path) as archive:
        for info in infos:
            if info.filename.endswith((".xml", ".rels")) and _has_doctype(archive, info):
                raise PermanentError(
                    f"DOCX part {info.filename} declares a DOCTYPE or entities, which Word"
                    " never writes; refused (an entity-expansion attack?)"
                )


def _has_doctype(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bool:
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
        return True
    except (_PrologEnd, expat.ExpatError):
        return False  # the root element started, or the parser will refuse the part itself
    return False


def docx_pages(path: Path, policy: ExtractPolicy) -> Iterator[Page]:
    check_archive(path, policy)
    try:
        with path.open("rb") as f:
            html = mammoth.convert_to_html(f).value
    except (KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise PermanentError(f"DOCX is damaged and cannot be read ({_short(exc)})") from None
    except Exception as exc:  # mammoth's XML and zip layers raise many types
        raise PermanentError(f"DOCX cannot be read ({_short(exc)})") from None
    text = html_to_text(html)
    del html
    if not text.strip():
        raise PermanentError("DOCX has no text to index")
    return split_text(text)


def _short(exc: BaseException) -> str:
    line = (str(exc).strip().splitlines() or [""])[0][:160]
    return line or type(exc).__name__
