from __future__ import annotations

import itertools

import pytest

from handlers.assets.chunking import Page, chunk_pages
from tests.support.policies import CHUNKING

SIZE, OVERLAP = CHUNKING.size, CHUNKING.overlap

WORDS = " ".join(f"word{i}" for i in range(1000))


def test_chunks_respect_size_and_cover_the_text() -> None:
    chunks = chunk_pages([Page(None, WORDS)], SIZE, OVERLAP)
    assert all(len(c.text) <= 600 for c in chunks)
    assert chunks[0].char_start == 0 and chunks[-1].char_end == len(WORDS)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for a, b in itertools.pairwise(chunks):
        assert b.char_start < a.char_end, "consecutive chunks overlap"
        assert a.char_end - b.char_start <= 120 + 20


def test_chunks_end_on_word_boundaries() -> None:
    words = set(WORDS.split())
    for chunk in chunk_pages([Page(None, WORDS)], size=100, overlap=20):
        assert set(chunk.text.split()) <= words


def test_chunking_is_deterministic() -> None:
    assert chunk_pages([Page(1, WORDS)], SIZE, OVERLAP) == chunk_pages(
        [Page(1, WORDS)], SIZE, OVERLAP
    )


def test_page_numbers_are_kept() -> None:
    pages = [Page(1, "alpha " * 80), Page(2, "beta " * 80), Page(3, "gamma " * 80)]
    chunks = chunk_pages(pages, size=300, overlap=50)
    assert chunks[0].page_start == 1
    assert chunks[-1].page_end == 3
    spanning = [c for c in chunks if c.page_start != c.page_end]
    assert spanning, "some chunk should span a page break"
    for c in chunks:
        assert "beta" not in c.text or (c.page_start or 0) <= 2 <= (c.page_end or 0)


def test_a_word_longer_than_the_chunk_is_split_not_lost() -> None:
    chunks = chunk_pages([Page(None, "x" * 1500)], SIZE, OVERLAP)
    assert chunks[-1].char_end == 1500
    assert sum(len(c.text) for c in chunks) >= 1500


@pytest.mark.parametrize("text", ["", "   \n\n  "])
def test_blank_text_gives_no_chunks(text: str) -> None:
    assert chunk_pages([Page(None, text)], SIZE, OVERLAP) == []


def test_bad_sizes_are_rejected() -> None:
    with pytest.raises(ValueError):
        chunk_pages([Page(None, "x")], size=100, overlap=100)
