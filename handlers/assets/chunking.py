"""Deterministic character chunking on word boundaries, keeping page numbers.

Sizes are in characters, not tokens: characters are model-independent and
cheap to count, and 600 characters (~150 tokens of English) stays well
inside every embedding model's input limit.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Page:
    number: int | None
    text: str


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    text: str
    char_start: int
    char_end: int
    page_start: int | None
    page_end: int | None


PAGE_SEPARATOR = "\n\n"


def chunk_pages(pages: Iterable[Page], size: int = 600, overlap: int = 120) -> list[Chunk]:
    """Split the pages' text into overlapping chunks of at most ``size`` characters."""
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError(f"need 0 <= overlap < size, got size={size} overlap={overlap}")
    text, starts, numbers = _join(pages)
    chunks: list[Chunk] = []
    start = _skip_space(text, 0)
    while start < len(text):
        end = _break_before(text, start, min(start + size, len(text)))
        body = text[start:end].strip()
        if body:
            first = numbers[bisect.bisect_right(starts, start) - 1] if starts else None
            last = numbers[bisect.bisect_right(starts, end - 1) - 1] if starts else None
            chunks.append(Chunk(len(chunks), body, start, end, first, last))
        if end >= len(text):
            break
        start = _skip_space(text, _next_start(text, start, end, overlap))
    return chunks


def _join(pages: Iterable[Page]) -> tuple[str, list[int], list[int | None]]:
    parts: list[str] = []
    starts: list[int] = []
    numbers: list[int | None] = []
    offset = 0
    for page in pages:
        if parts:
            parts.append(PAGE_SEPARATOR)
            offset += len(PAGE_SEPARATOR)
        starts.append(offset)
        numbers.append(page.number)
        parts.append(page.text)
        offset += len(page.text)
    return "".join(parts), starts, numbers


def _break_before(text: str, start: int, limit: int) -> int:
    """The last word boundary in (start, limit]; ``limit`` if the word is longer."""
    if limit >= len(text) or text[limit].isspace():
        return limit
    cut = max(text.rfind(" ", start, limit), text.rfind("\n", start, limit))
    return cut if cut > start else limit


def _next_start(text: str, start: int, end: int, overlap: int) -> int:
    """Where the next chunk starts: ``overlap`` back from ``end``, at a word start.

    If no word starts between there and ``end`` (one very long word), cut
    inside the word, as the chunk's own end did.
    """
    pos = max(end - overlap, start + 1)
    candidate = pos
    while candidate < end and not text[candidate - 1].isspace():
        candidate += 1
    return candidate if candidate < end else pos


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos
