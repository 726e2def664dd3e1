"""Turn a downloaded file into chunks on disk, inside an extraction process.

``extract_to_file`` is what the CPU pool runs: open the document (type
checked against its bytes, guards applied), read it page by page, chunk
incrementally and write each chunk as one JSON line. The event loop then
reads ready chunks in batches, so neither process holds the whole text and
the parsing never runs on the loop.

The time limit is enforced here, in the extraction process, with an
interval timer whose exception derives from BaseException so that the
parsers' ``except Exception`` cannot swallow it. The pool kills the process
as a backstop if even that does not end the work.
"""

from __future__ import annotations

import gc
import json
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

from handlers import tracing
from handlers.assets.chunking import PAGE_SEPARATOR, Chunk, Chunker
from handlers.assets.formats import Document, open_document
from handlers.assets.formats.sniff import Kind
from handlers.assets.formats.text import too_long
from handlers.deps import ExtractPolicy
from handlers.errors import PermanentError


@dataclass(frozen=True, slots=True)
class ExtractRequest:
    path: str
    mime_type: str
    out_path: str
    policy: ExtractPolicy
    chunk_size: int
    chunk_overlap: int


@dataclass(frozen=True, slots=True)
class ExtractSummary:
    """What extraction produced; ``chars`` is the length of the whole text."""

    kind: str
    page_count: int | None
    chunks: int
    chars: int
    unreadable_pages: tuple[int, ...] = ()


class _TimeUp(BaseException):
    """Raised by the timer inside the parser; BaseException so no ``except Exception`` eats it."""


def extract_to_file(request: ExtractRequest) -> ExtractSummary:
    """Extract and chunk ``request.path`` into JSON lines at ``request.out_path``.

    A MemoryError (the process's memory ceiling, see ``cpu_pool``) is raised
    again only after the parser's frames, and the document tree they hold,
    are gone: otherwise the process could not even report it.
    """
    out_of_memory = False
    try:
        with time_limit(request.policy.time_limit_s):
            with tracing.span("asset.open") as span:
                document = open_document(Path(request.path), request.mime_type, request.policy)
                span.set("conveyor.document.kind", document.kind.value)
            with tracing.span("asset.chunk") as span:
                summary = _write_chunks(document, request)
                span.update(
                    {
                        "conveyor.document.pages": summary.page_count or 0,
                        "conveyor.document.chars": summary.chars,
                        "conveyor.asset.chunks": summary.chunks,
                    }
                )
            return summary
    except MemoryError:
        out_of_memory = True
    if out_of_memory:
        gc.collect()  # parsers' trees have cycles (parent links)
        raise MemoryError("the document needs more memory than this process may use")
    raise AssertionError("unreachable")


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """PermanentError when the block runs longer than ``seconds`` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: FrameType | None) -> None:
        raise _TimeUp

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _TimeUp:
        raise PermanentError(
            f"extracting the text took longer than the {seconds:g} s limit;"
            " the file may be damaged or too complex"
        ) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _write_chunks(document: Document, request: ExtractRequest) -> ExtractSummary:
    chunker = Chunker(request.chunk_size, request.chunk_overlap)
    policy = request.policy
    count = chars = pages = 0
    with open(request.out_path, "w", encoding="utf-8") as out:
        for page in document.pages:
            chars += len(page.text) + (len(PAGE_SEPARATOR) if pages else 0)
            pages += 1
            _check_caps(chars, count, policy)
            count += _write(out, chunker.feed(page))
        count += _write(out, chunker.finish())
        _check_caps(chars, count, policy)
    unreadable = tuple(document.unreadable_pages)
    if count == 0:
        raise PermanentError(_no_text(document, unreadable))
    return ExtractSummary(document.kind.value, document.page_count, count, chars, unreadable)


def _check_caps(chars: int, chunks: int, policy: ExtractPolicy) -> None:
    """Refuse a document whose text would cost too much to embed and store."""
    if chars > policy.max_chars:
        raise too_long(policy.max_chars)
    if chunks > policy.max_chunks:
        raise PermanentError(
            f"document makes more than {policy.max_chunks} chunks; limit is {policy.max_chunks}"
        )


def _write(out: TextIO, chunks: list[Chunk]) -> int:
    for c in chunks:
        line = [c.index, c.text, c.char_start, c.char_end, c.page_start, c.page_end]
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
    return len(chunks)


def _no_text(document: Document, unreadable: tuple[int, ...]) -> str:
    if document.kind is not Kind.PDF:
        return "file has no text to index"
    if unreadable and len(unreadable) == document.page_count:
        return f"PDF is damaged: none of its {document.page_count} pages can be read"
    return "PDF has no extractable text: it may be scanned images, and OCR is not supported"


def read_chunks(path: Path, batch_size: int) -> Iterator[list[Chunk]]:
    """The chunks written by ``extract_to_file``, ``batch_size`` at a time."""
    batch: list[Chunk] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            batch.append(Chunk(*json.loads(line)))
            if len(batch) >= batch_size:
                yield batch
                batch = []
    if batch:
        yield batch
