"""Plain text and markdown, CSV and JSON: decoded, rendered as lines, cut into pieces.

Text-like documents have no pages; they are handed to the chunker in
pieces of about ``PIECE_CHARS`` so nothing downstream holds the whole text
at once. Plain text is cut at blank lines, which is exactly the separator
the chunker puts between pieces, so offsets match the file's own text.
"""

from __future__ import annotations

import csv
import io
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
        raise PermanentError("file is empty: no text to index")
    return text


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


def text_pages(path: Path) -> Iterator[Page]:
    """Plain text and markdown (markdown is indexed as written: its marks carry structure)."""
    return split_text(read_text(path))


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
    text = read_text(path)
    sample = text[: 64 * 1024]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t|")
        has_header = csv.Sniffer().has_header(sample)
    except csv.Error:
        dialect, has_header = csv.excel, True
    try:
        rows = csv.reader(io.StringIO(text, newline=""), dialect)
        header = next(rows, None) if has_header else None
        lines = (_row_line(row, header) for row in rows)
        yield from grouped((line for line in lines if line), CSV_ROWS_PER_PIECE)
    except csv.Error as exc:
        raise PermanentError(f"CSV cannot be read: {exc}") from None


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
    """(path, text) for each non-empty scalar, in document order (iteratively: no recursion)."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, dict):
            for key in reversed(list(item)):
                stack.append((f"{where}.{key}" if where else str(key), item[key]))
        elif isinstance(item, list):
            for i in range(len(item) - 1, -1, -1):
                stack.append((f"{where}[{i}]", item[i]))
        elif item is not None and str(item).strip():
            yield where, _scalar(item)


def _scalar(item: Any) -> str:
    if isinstance(item, bool):
        return "true" if item else "false"
    return str(item)
