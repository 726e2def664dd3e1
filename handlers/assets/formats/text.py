"""Plain text and markdown, CSV and JSON: decoded, rendered as lines, cut into pieces.

Text-like documents have no pages; they are handed to the chunker in
pieces of about ``PIECE_CHARS`` so nothing downstream holds the whole text
at once. Plain text is cut at blank lines, which is exactly the separator
the chunker puts between pieces, so offsets match the file's own text.
Text, markdown, HTML and CSV files are read in blocks, so memory does not
grow with the file; JSON is parsed whole, up to ``JSON_MAX_BYTES``.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from handlers.assets.chunking import PAGE_SEPARATOR, Page
from handlers.errors import PermanentError

PIECE_CHARS = 64 * 1024
CSV_ROWS_PER_PIECE = 200
JSON_LINES_PER_PIECE = 200


def decode(raw: bytes) -> str:
    """UTF-8 (with or without BOM), UTF-16 with a BOM, else Latin-1 (which never fails)."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            raise PermanentError("file claims to be UTF-16 text but is not") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_text(path: Path) -> str:
    text = decode(path.read_bytes())
    if not text.strip():
        raise PermanentError(EMPTY)
    return text


EMPTY = "file is empty: no text to index"
READ_BYTES = 1024 * 1024
JSON_MAX_BYTES = 8 * 1024 * 1024  # parsed whole: up to ~35x this in memory


def text_encoding(path: Path) -> str:
    """``decode``'s choice for the whole file, made reading it in blocks."""
    with path.open("rb") as f:
        if f.read(2) in (b"\xff\xfe", b"\xfe\xff"):
            return "utf-16"
        f.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            while block := f.read(READ_BYTES):
                decoder.decode(block)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return "latin-1"
    return "utf-8-sig"


def read_blocks(path: Path, block_chars: int = PIECE_CHARS) -> Iterator[str]:
    """The file's text (decoded as ``decode`` would), ``block_chars`` at a time."""
    encoding = text_encoding(path)
    try:
        with path.open(encoding=encoding, newline="") as f:
            while block := f.read(block_chars):
                yield block
    except UnicodeDecodeError:
        raise PermanentError("file claims to be UTF-16 text but is not") from None


def split_text(text: str, piece_chars: int = PIECE_CHARS) -> Iterator[Page]:
    """Pages of about ``piece_chars``, cut at a blank line when there is one.

    Joined with ``PAGE_SEPARATOR`` the pieces give back ``text`` exactly.
    """
    pos = 0
    while len(text) - pos > piece_chars:
        cut = text.find(PAGE_SEPARATOR, pos + piece_chars // 2)
        if cut < 0:
            break
        yield Page(None, text[pos:cut])
        pos = cut + len(PAGE_SEPARATOR)
    yield Page(None, text[pos:])


def too_long(max_chars: int) -> PermanentError:
    return PermanentError(
        f"document has more than {max_chars} characters of text; limit is {max_chars}"
    )


class Pieces:
    """Text that arrives in parts, handed on as pages cut at blank lines.

    Like ``split_text``, joining the pages with ``PAGE_SEPARATOR`` gives back
    the text exactly. More than ``max_chars`` in all is refused as it
    arrives, which also bounds what a text without blank lines can hold.
    """

    def __init__(self, max_chars: int, piece_chars: int = PIECE_CHARS) -> None:
        self.max_chars = max_chars
        self.piece_chars = piece_chars
        self.chars = 0
        self._parts: list[str] = []
        self._held = 0

    def add(self, text: str) -> Iterator[Page]:
        if not text:
            return
        self.chars += len(text)
        if self.chars > self.max_chars:
            raise too_long(self.max_chars)
        self._parts.append(text)
        self._held += len(text)
        if self._held < self.piece_chars:
            return
        held = "".join(self._parts)
        cut = held.rfind(PAGE_SEPARATOR)
        if cut < 0:
            self._parts = [held]
            return
        yield Page(None, held[:cut])
        rest = held[cut + len(PAGE_SEPARATOR) :]
        self._parts, self._held = [rest], len(rest)

    def finish(self) -> Iterator[Page]:
        yield Page(None, "".join(self._parts))
        self._parts, self._held = [], 0


def text_pages(path: Path, max_chars: int) -> Iterator[Page]:
    """Plain text and markdown (markdown is indexed as written: its marks carry structure).

    Read in blocks: memory does not grow with the file.
    """
    pieces = Pieces(max_chars)
    has_text = False
    for block in read_blocks(path):
        has_text = has_text or not block.isspace()
        yield from pieces.add(block)
    if not has_text:
        raise PermanentError(EMPTY)
    yield from pieces.finish()


def grouped(lines: Iterable[str], per_piece: int) -> Iterator[Page]:
    group: list[str] = []
    for line in lines:
        group.append(line)
        if len(group) >= per_piece:
            yield Page(None, "\n".join(group))
            group = []
    if group:
        yield Page(None, "\n".join(group))


def csv_pages(path: Path) -> Iterator[Page]:
    """One line per row: ``column: value | column: value`` when the file has a header row.

    Naming the column in every row keeps each chunk understandable on its own.
    """
    encoding = text_encoding(path)
    with path.open(encoding=encoding, newline="") as f:
        sample = f.read(64 * 1024)
    if not sample.strip():
        raise PermanentError(EMPTY)
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t|")
        has_header = csv.Sniffer().has_header(sample)
    except csv.Error:
        dialect, has_header = csv.excel, True
    try:
        with path.open(encoding=encoding, newline="") as f:  # rows read as they are needed
            rows = csv.reader(f, dialect)
            header = next(rows, None) if has_header else None
            lines = (_row_line(row, header) for row in rows)
            yield from grouped((line for line in lines if line), CSV_ROWS_PER_PIECE)
    except csv.Error as exc:
        raise PermanentError(f"CSV cannot be read: {exc}") from None
    except UnicodeDecodeError:
        raise PermanentError("file claims to be UTF-16 text but is not") from None


def _row_line(row: list[str], header: list[str] | None) -> str:
    if header is None:
        return " | ".join(cell.strip() for cell in row if cell.strip())
    cells = []
    for i, cell in enumerate(row):
        if cell.strip():
            name = header[i].strip() if i < len(header) and header[i].strip() else f"column {i + 1}"
            cells.append(f"{name}: {cell.strip()}")
    return " | ".join(cells)


def json_pages(path: Path) -> Iterator[Page]:
    """Flattened to ``path.to[0].key: value`` lines, one per scalar.

    The path keeps each value's meaning next to it, which a pretty-printed
    dump loses once it is cut into chunks.
    """
    size = path.stat().st_size
    if size > JSON_MAX_BYTES:
        raise PermanentError(
            f"JSON is {size / 2**20:.0f} MB; JSON files over {JSON_MAX_BYTES / 2**20:.0f} MB"
            " are not indexed (convert it to CSV or text)"
        )
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise PermanentError(
            f"JSON is invalid at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise PermanentError("JSON is nested too deeply to read") from None
    lines = (f"{path}: {value}" if path else value for path, value in flatten(data))
    pages = grouped(lines, JSON_LINES_PER_PIECE)
    first = next(pages, None)
    if first is None:
        raise PermanentError("JSON has no values to index")
    yield first
    yield from pages


def flatten(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, text) for each non-empty scalar, in document order.

    Iterative (no recursion), and each container's children are visited
    through an iterator, so no list of every path is ever built.
    """
    stack: list[Iterator[tuple[str, Any]]] = [iter([(path, value)])]
    while stack:
        for where, item in stack[-1]:
            if isinstance(item, dict | list):
                stack.append(_children(where, item))
                break
            if item is not None and str(item).strip():
                yield where, _scalar(item)
        else:
            stack.pop()


def _children(where: str, item: dict[Any, Any] | list[Any]) -> Iterator[tuple[str, Any]]:
    if isinstance(item, dict):
        return ((f"{where}.{key}" if where else str(key), v) for key, v in item.items())
    return ((f"{where}[{i}]", v) for i, v in enumerate(item))


def _scalar(item: Any) -> str:
    if isinstance(item, bool):
        return "true" if item else "false"
    return str(item)
