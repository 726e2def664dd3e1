"""Document formats: each turns a file into pages of text (see ``open_document``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from handlers.assets.chunking import Page
from handlers.assets.formats import sniff
from handlers.assets.formats.docx import docx_pages
from handlers.assets.formats.html import html_pages
from handlers.assets.formats.pdf import open_pdf
from handlers.assets.formats.sniff import Kind
from handlers.assets.formats.text import csv_pages, json_pages, text_pages
from handlers.deps import ExtractPolicy


@dataclass
class Document:
    """An opened document: its kind, page count (PDF only) and its pages, read lazily."""

    kind: Kind
    pages: Iterable[Page]
    page_count: int | None = None
    unreadable_pages: list[int] = field(default_factory=list)


def open_document(path: Path, mime_type: str, policy: ExtractPolicy) -> Document:
    """Check the declared type against the bytes and open the document.

    Raises PermanentError for unsupported, mismatched, damaged, encrypted,
    empty or over-limit files.
    """
    kind = sniff.kind_of(mime_type)
    with path.open("rb") as f:
        head = f.read(sniff.HEAD_BYTES)
    sniff.check_magic(kind, head, mime_type)
    if kind is Kind.PDF:
        pdf = open_pdf(path, policy)
        return Document(kind, pdf, pdf.count, pdf.unreadable)
    return Document(kind, _lazy(kind, path, policy))


def _lazy(kind: Kind, path: Path, policy: ExtractPolicy) -> Iterator[Page]:
    if kind is Kind.DOCX:
        yield from docx_pages(path, policy)
    elif kind is Kind.HTML:
        yield from html_pages(path, policy.max_chars)
    elif kind is Kind.CSV:
        yield from csv_pages(path)
    elif kind is Kind.JSON:
        yield from json_pages(path)
    else:
        yield from text_pages(path, policy.max_chars)
