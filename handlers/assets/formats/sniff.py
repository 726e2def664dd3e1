"""What kind of document a declared MIME type names, and whether the bytes agree.

The declared type decides the parser; the first bytes must not contradict
it. A mismatch is a permanent error naming both, so the uploader can fix the
file or its type.
"""

from __future__ import annotations

from enum import StrEnum

from handlers.errors import PermanentError

HEAD_BYTES = 8192


class Kind(StrEnum):
    PDF = "pdf"
    DOCX = "docx"
    TEXT = "text"
    MARKDOWN = "markdown"
    HTML = "html"
    CSV = "csv"
    JSON = "json"


DOCX_MIME = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"

KINDS: dict[str, Kind] = {
    "application/pdf": Kind.PDF,
    "application/x-pdf": Kind.PDF,
    DOCX_MIME: Kind.DOCX,
    "text/plain": Kind.TEXT,
    "text/markdown": Kind.MARKDOWN,
    "text/x-markdown": Kind.MARKDOWN,
    "text/html": Kind.HTML,
    "application/xhtml+xml": Kind.HTML,
    "text/csv": Kind.CSV,
    "application/csv": Kind.CSV,
    "application/json": Kind.JSON,
    "text/json": Kind.JSON,
}

_LEGACY = {
    "application/msword": "legacy Word .doc files are not supported; save the file as .docx",
    "application/vnd.ms-excel": "Excel files are not supported; export the sheet as CSV",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": (
        "Excel files are not supported; export the sheet as CSV"
    ),
}

_PDF = b"%PDF-"
_ZIP = (b"PK\x03\x04", b"PK\x05\x06")
_OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # legacy Office, and password-protected DOCX
_OTHER_MAGIC = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip archive"),
)
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def base_type(mime_type: str) -> str:
    return mime_type.split(";", 1)[0].strip().lower()


def kind_of(mime_type: str) -> Kind:
    """The document kind for a declared MIME type; PermanentError when unsupported."""
    base = base_type(mime_type)
    kind = KINDS.get(base)
    if kind is not None:
        return kind
    if base in _LEGACY:
        raise PermanentError(_LEGACY[base])
    raise PermanentError(
        f"unsupported file type {base!r}: upload a PDF, DOCX, text, markdown, HTML, CSV"
        " or JSON file"
    )


def looks_like(head: bytes) -> str | None:
    """A short description of a binary format recognised from ``head``, if any."""
    if head.lstrip()[:5] == _PDF:
        return "a PDF"
    if head.startswith(_ZIP):
        return "a ZIP archive (such as DOCX)"
    if head.startswith(_OLE):
        return "a legacy or password-protected Office file"
    for magic, label in _OTHER_MAGIC:
        if head.startswith(magic):
            return label
    return None


def check_magic(kind: Kind, head: bytes, declared: str) -> None:
    """Raise PermanentError when the file's first bytes contradict its declared type."""
    declared = base_type(declared)
    if not head:
        raise PermanentError("file is empty: no text to index")
    if kind is Kind.PDF:
        if _PDF not in head[:1024]:
            raise PermanentError(_mismatch(declared, "PDF", head))
    elif kind is Kind.DOCX:
        if head.startswith(_OLE):
            raise PermanentError(
                "DOCX is password-protected (or a legacy .doc file): remove the password"
                " or save it as .docx, then upload it again"
            )
        if not head.startswith(_ZIP):
            raise PermanentError(_mismatch(declared, "Word document", head))
    else:
        _check_text(head, declared)


def _check_text(head: bytes, declared: str) -> None:
    found = looks_like(head)
    if found is not None:
        raise PermanentError(f"file declared as {declared} is {found}, not text")
    if not head.startswith(_UTF16_BOMS) and b"\x00" in head:
        raise PermanentError(f"file declared as {declared} contains binary data, not text")


def _mismatch(declared: str, expected: str, head: bytes) -> str:
    found = looks_like(head)
    article = "an" if expected[0] in "AEIOU" else "a"
    message = f"file declared as {declared} is not {article} {expected}"
    return f"{message}; it looks like {found}" if found else message
