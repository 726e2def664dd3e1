"""PDF with pypdf, page by page, page numbers kept."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pypdf import PasswordType, PdfReader
from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError

from handlers.assets.chunking import Page
from handlers.deps import ExtractPolicy
from handlers.errors import PermanentError


@dataclass
class PdfPages:
    """The pages of an opened PDF; ``unreadable`` counts pages pypdf could not read."""

    reader: PdfReader
    count: int
    unreadable: list[int] = field(default_factory=list)

    def __iter__(self) -> Iterator[Page]:
        for number, page in enumerate(self.reader.pages, start=1):
            try:
                text = page.extract_text() or ""
            except Exception:  # one damaged page should not lose the document
                self.unreadable.append(number)
                continue
            yield Page(number, text)


def open_pdf(path: Path, policy: ExtractPolicy) -> PdfPages:
    """Open and check the PDF: readable, not (really) encrypted, within the page cap."""
    try:
        reader = PdfReader(path)
        _decrypt(reader)
        count = len(reader.pages)
    except PermanentError:
        raise
    except (FileNotDecryptedError, DependencyError):
        raise PermanentError(_ENCRYPTED) from None
    except Exception as exc:  # pypdf raises many types for damaged files
        raise PermanentError(f"PDF is damaged and cannot be read ({_short(exc)})") from None
    if count == 0:
        raise PermanentError("PDF has no pages")
    if count > policy.max_pages:
        raise PermanentError(f"PDF has {count} pages; limit is {policy.max_pages}")
    return PdfPages(reader, count)


_ENCRYPTED = "PDF is encrypted: remove the password and upload it again"


def _decrypt(reader: PdfReader) -> None:
    """Open PDFs that only have an owner password (no password needed to read)."""
    if not reader.is_encrypted:
        return
    if reader.decrypt("") == PasswordType.NOT_DECRYPTED:
        raise PermanentError(_ENCRYPTED)


def _short(exc: BaseException) -> str:
    if isinstance(exc, PdfReadError | ValueError | KeyError | IndexError):
        line = (str(exc).strip().splitlines() or [""])[0][:160]
        if line:
            return line
    return type(exc).__name__
