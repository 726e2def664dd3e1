"""Turn a downloaded file into pages of text.

Only plain text and markdown so far; PDF, DOCX, HTML, CSV and JSON arrive
with the ingestion issue.
"""

from __future__ import annotations

from pathlib import Path

from handlers.assets.chunking import Page
from handlers.errors import PermanentError

TEXT_TYPES = frozenset({"text/plain", "text/markdown"})


def base_type(mime_type: str) -> str:
    return mime_type.split(";", 1)[0].strip().lower()


def extract_pages(path: Path, mime_type: str) -> list[Page]:
    """Extract the file's text; PermanentError when the type or content is unusable."""
    kind = base_type(mime_type)
    if kind in TEXT_TYPES:
        return _text(path)
    raise PermanentError(f"unsupported file type {kind!r}")


def _text(path: Path) -> list[Page]:
    raw = path.read_bytes()
    if b"\x00" in raw[:8192]:
        raise PermanentError("file declared as text contains binary data")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    if not text.strip():
        raise PermanentError("file is empty: no text to index")
    return [Page(None, text)]
