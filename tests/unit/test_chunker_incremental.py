"""The incremental chunker gives exactly the chunks of the original whole-text algorithm."""

from __future__ import annotations

import bisect
import itertools
import random

import pytest

from handlers.assets.chunking import (
    PAGE_SEPARATOR,
    Chunk,
    Chunker,
    Page,
    _break_before,
    _next_start,
    _skip_space,
    chunk_pages,
    iter_chunks,
)
from tests.support.policies import CHUNKING


def reference_chunks(pages: list[Page], size: int, overlap: int) -> list[Chunk]:
    """The whole-text algorithm as it was before chunking became incremental."""
    text = PAGE_SEPARATOR.join(p.text for p in pages)
    starts, offset = [], 0
    for page in pages:
        starts.append(offset)
        offset += len(page.text) + len(PAGE_SEPARATOR)
    numbers = [p.number for p in pages]
    chunks: list[Chunk] = []
    start = _skip_space(text, 0)
    while start < len(text):
        end = _break_before(text, start, min(start + size, len(text)))
        body = text[start:end].strip()
        if body:
            first = numbers[bisect.bisect_right(starts, start) - 1]
            last = numbers[bisect.bisect_right(starts, end - 1) - 1]
            chunks.append(Chunk(len(chunks), body, start, end, first, last))
        if end >= len(text):
            break
        start = _skip_space(text, _next_start(text, start, end, overlap))
    return chunks


def _random_pages(rnd: random.Random) -> list[Page]:
    tokens = ["a", "bb", "word", "\n", "  ", "\n\n", "x" * rnd.randint(1, 80)]
    text = " ".join(rnd.choice(tokens) for _ in range(rnd.randint(0, 500)))
    cuts = sorted(rnd.sample(range(len(text) + 1), min(len(text) + 1, rnd.randint(0, 8))))
    bounds = [0, *cuts, len(text)]
    return [
        Page(i if rnd.random() < 0.8 else None, text[a:b])
        for i, (a, b) in enumerate(itertools.pairwise(bounds), 1)
    ]


@pytest.mark.parametrize("seed", range(5))
def test_page_by_page_equals_the_whole_text_algorithm(seed: int) -> None:
    rnd = random.Random(seed)
    for _ in range(200):
        pages = _random_pages(rnd)
        size = rnd.choice([40, 100, 600])
        overlap = rnd.choice([0, 10, 39])
        assert chunk_pages(pages, size, overlap) == reference_chunks(pages, size, overlap)


def test_chunks_come_out_before_the_last_page_arrives() -> None:
    chunker = Chunker(100, 20)
    early = chunker.feed(Page(1, "alpha " * 100))
    assert early, "a full page yields chunks at once"
    rest = chunker.finish()
    assert [c.index for c in early + rest] == list(range(len(early) + len(rest)))


def test_the_chunker_holds_only_the_unchunked_tail() -> None:
    chunker = Chunker(CHUNKING.size, CHUNKING.overlap)
    for n in range(1, 200):
        chunker.feed(Page(n, "word " * 400))
        assert len(chunker._buffer) < 2 * 600


def test_iter_chunks_is_lazy() -> None:
    def pages() -> object:
        yield Page(1, "one " * 500)
        raise AssertionError("read past what the first chunk needed")

    first = next(iter_chunks(pages(), 100, 10))  # type: ignore[arg-type]
    assert first.page_start == 1


def test_feeding_after_finish_is_an_error() -> None:
    chunker = Chunker(CHUNKING.size, CHUNKING.overlap)
    chunker.finish()
    with pytest.raises(RuntimeError):
        chunker.feed(Page(1, "late"))
