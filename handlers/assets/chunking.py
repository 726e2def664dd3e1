"""Deterministic character chunking on word boundaries, keeping page numbers.

Sizes are in characters, not tokens: characters are model-independent and
cheap to count, and 600 characters (~150 tokens of English) stays well
inside every embedding model's input limit.

``Chunker`` works incrementally: pages are fed one at a time and only the
unchunked tail of the text is held, so a 1000-page document never sits in
memory whole. ``chunk_pages`` is the same algorithm over a finished list and
gives exactly the chunks the incremental form gives.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
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


def chunk_pages(pages: Iterable[Page], size: int, overlap: int) -> list[Chunk]:
    """Split the pages' text into overlapping chunks of at most ``size`` characters."""
    return list(iter_chunks(pages, size, overlap))


def iter_chunks(pages: Iterable[Page], size: int, overlap: int) -> Iterator[Chunk]:
    """``chunk_pages`` as a generator: chunks come out as soon as the text allows."""
    chunker = Chunker(size, overlap)
    for page in pages:
        yield from chunker.feed(page)
    yield from chunker.finish()


class Chunker:
    """Incremental chunking: ``feed`` pages in order, then ``finish``.

    Offsets are positions in the text of all pages joined by
    ``PAGE_SEPARATOR``, NUL characters removed. A chunk is cut only once the text reaches past its
    size limit, so every decision sees the same characters as it would with
    the whole text at hand; the output does not depend on how the text was
    split into pages.
    """

    def __init__(self, size: int, overlap: int) -> None:
        if size <= 0 or not 0 <= overlap < size:
            raise ValueError(f"need 0 <= overlap < size, got size={size} overlap={overlap}")
        self.size = size
        self.overlap = overlap
        self._buffer = ""  # the joined text from ``_base`` on
        self._base = 0
        self._start = 0  # next chunk's start (absolute), not yet past leading space
        self._starts: list[int] = []
        self._numbers: list[int | None] = []
        self._count = 0
        self._done = False

    def feed(self, page: Page) -> list[Chunk]:
        """Add the next page; return the chunks that are now complete."""
        if self._done:
            raise RuntimeError("chunker already finished")
        offset = self._base + len(self._buffer)
        if self._starts:
            self._buffer += PAGE_SEPARATOR
            offset += len(PAGE_SEPARATOR)
        self._starts.append(offset)
        self._numbers.append(page.number)
        # Postgres text cannot hold NUL (PDF text extraction does produce it):
        # drop it here, before the chunk is embedded and stored.
        self._buffer += page.text.replace("\x00", "")
        return self._cut(final=False)

    def finish(self) -> list[Chunk]:
        """No more pages: return the remaining chunks."""
        chunks = self._cut(final=True)
        self._done = True
        return chunks

    def _cut(self, final: bool) -> list[Chunk]:
        text, base = self._buffer, self._base
        chunks: list[Chunk] = []
        start = _skip_space(text, self._start - base)
        while start < len(text):
            limit = start + self.size
            if not final and limit >= len(text):
                break  # the cut needs the character at ``limit``: wait for more text
            end = _break_before(text, start, min(limit, len(text)))
            body = text[start:end].strip()
            if body:
                first, last = self._page_at(base + start), self._page_at(base + end - 1)
                chunks.append(Chunk(self._count, body, base + start, base + end, first, last))
                self._count += 1
            if end >= len(text):
                start = len(text)
                break
            start = _skip_space(text, _next_start(text, start, end, self.overlap))
        self._start = base + start
        self._buffer, self._base = text[start:], base + start
        return chunks

    def _page_at(self, pos: int) -> int | None:
        return self._numbers[bisect.bisect_right(self._starts, pos) - 1]


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
