"""HTML to readable text with the standard library's ``html.parser``.

Script, style and other non-content elements are dropped; block elements
end lines and paragraphs end with a blank line; headings become ``#``
lines and list items ``-`` or ``1.`` lines (nested lists indented), so the
structure survives as markdown-like text; table cells are joined with
`` | ``; ``<pre>`` keeps its whitespace; entities are decoded. Also used
for DOCX, whose converter produces HTML.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

from handlers.assets.chunking import Page
from handlers.assets.formats.text import Pieces, read_blocks
from handlers.errors import PermanentError

SKIP = frozenset(
    {
        "script",
        "style",
        "noscript",
        "template",
        "svg",
        "math",
        "iframe",
        "object",
        "canvas",
        "select",
        "button",
    }
)
VOID = frozenset(
    {
        "br",
        "hr",
        "img",
        "input",
        "meta",
        "link",
        "area",
        "base",
        "col",
        "embed",
        "source",
        "track",
        "wbr",
        "param",
    }
)
PARAGRAPHS = frozenset(
    {
        "p",
        "div",
        "section",
        "article",
        "header",
        "footer",
        "nav",
        "aside",
        "main",
        "blockquote",
        "pre",
        "table",
        "ul",
        "ol",
        "dl",
        "figure",
        "form",
        "fieldset",
        "address",
        "details",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "hr",
        "title",
        "caption",
        "figcaption",
    }
)
LINES = frozenset({"br", "tr", "li", "dt", "dd", "summary", "option", "legend"})
CELLS = frozenset({"td", "th"})
HEADINGS = {f"h{n}": "#" * n for n in range(1, 7)}
_SPACE = re.compile(r"\s+")


class HtmlText(HTMLParser):
    """Feed HTML, read text; ``take()`` returns the text finished so far."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._out: list[str] = []
        self._break = 0  # pending newlines before the next text: 0, 1 or 2
        self._started = False
        self._space = False  # a space is pending before the next word
        self._skip = 0
        self._pre = 0
        self._lists: list[list[int]] = []  # per open list: [next number] or [] for bullets
        self._prefix = ""
        self._row_cells = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in SKIP:
            self._skip += tag not in VOID
            return
        if self._skip:
            return
        if tag == "pre":
            self._pre += 1
        self._open_block(tag)
        if tag in ("ul", "ol"):
            self._lists.append([1] if tag == "ol" else [])
        elif tag == "li":
            self._prefix = "  " * max(len(self._lists) - 1, 0) + self._bullet()
        elif tag in HEADINGS:
            self._prefix = HEADINGS[tag] + " "
        elif tag == "tr":
            self._row_cells = 0
        elif tag in CELLS:
            if self._row_cells:
                self._space, self._prefix = False, self._prefix + " | "
            self._row_cells += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in SKIP:
            self._skip = max(self._skip - 1, 0)
            return
        if self._skip:
            return
        if tag == "pre":
            self._pre = max(self._pre - 1, 0)
        if tag in ("ul", "ol") and self._lists:
            self._lists.pop()
            if self._lists:
                self._want_break(1)
                return
        if tag in PARAGRAPHS:
            self._want_break(2)
        elif tag in LINES:
            self._want_break(1)

    def handle_data(self, data: str) -> None:
        if self._skip or not data:
            return
        if self._pre:
            self._emit(data)
            return
        if data[:1].isspace():
            self._space = True
        words = _SPACE.sub(" ", data).strip()
        if words:
            self._emit(words)
            self._space = data[-1:].isspace()

    def take(self) -> str:
        """The text produced since the last call."""
        text, self._out = "".join(self._out), []
        return text

    def _open_block(self, tag: str) -> None:
        if tag in ("ul", "ol") and self._lists:
            self._want_break(1)  # a nested list continues its parent item
        elif tag in PARAGRAPHS:
            self._want_break(2)
        elif tag in LINES:
            self._want_break(1 if tag != "br" else self._break + 1)
        if tag == "hr":
            self._emit("---")

    def _bullet(self) -> str:
        if not self._lists or not self._lists[-1]:
            return "- "
        number = self._lists[-1][0]
        self._lists[-1][0] += 1
        return f"{number}. "

    def _want_break(self, n: int) -> None:
        self._break = min(max(self._break, n), 2)
        self._space = False

    def _emit(self, text: str) -> None:
        if self._started and self._break:
            self._out.append("\n" * self._break)
        elif self._started and self._space:
            self._out.append(" ")
        self._out.append(self._prefix + text)
        self._started = True
        self._break, self._space, self._prefix = 0, False, ""


def html_to_text(html: str) -> str:
    parser = HtmlText()
    parser.feed(html)
    parser.close()
    return parser.take()


def html_pages(path: Path, max_chars: int) -> Iterator[Page]:
    """The page's text, parsed as the file is read in blocks (memory does not grow with it)."""
    parser = HtmlText()
    pieces = Pieces(max_chars)
    has_text = False
    for block in read_blocks(path):
        parser.feed(block)
        text = parser.take()
        has_text = has_text or bool(text.strip())
        yield from pieces.add(text)
    parser.close()
    text = parser.take()
    if not (has_text or text.strip()):
        raise PermanentError("HTML page has no text to index")
    yield from pieces.add(text)
    yield from pieces.finish()
