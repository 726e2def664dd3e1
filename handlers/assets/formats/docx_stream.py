"""Large DOCX files: ``word/document.xml`` read as a stream, in bounded memory.

mammoth builds the whole XML tree (25-60 bytes of memory per byte of XML), so
past a size the document is read here instead: expat (``iterparse``) walks
the XML, each element is dropped as soon as it ended, and the same HTML that
mammoth writes for the parts that carry text — paragraphs, headings (by style
id or name, as mammoth's default style map), bullet and numbered lists (from
``numbering.xml``, nested by level), tables, line breaks, tabs, note
references — is fed piece by piece to the HTML-to-text converter that
renders mammoth's output. Deleted text, field instructions and the
``mc:Choice`` of alternate content are skipped, as mammoth does. Footnotes
and endnotes follow the body as a numbered list (in file order, without
mammoth's back-link arrow).

Only the open path of elements and the current piece of text are held, so
memory does not grow with the document.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from html import escape
from xml.etree import ElementTree

from handlers.assets.chunking import Page
from handlers.assets.formats.docx_styles import (
    MAX_DEFINITIONS,
    Definitions,
    W,
    attr,
    events,
    read_definitions,
)
from handlers.assets.formats.html import HtmlText
from handlers.assets.formats.text import Pieces
from handlers.errors import PermanentError

MC = "{http://schemas.openxmlformats.org/markup-compatibility/2006}"
FEED_CHARS = 64 * 1024
SKIPPED = frozenset(
    {
        f"{W}del",
        f"{W}moveFrom",
        f"{W}delText",
        f"{W}instrText",
        f"{W}delInstrText",
        f"{MC}Choice",
        f"{W}rPr",
        f"{W}sectPr",
    }
)
TEXT_CHARS = {f"{W}tab": "\t", f"{W}noBreakHyphen": "\u2011", f"{W}softHyphen": "\u00ad"}
NOTES = {f"{W}footnoteReference": "footnote", f"{W}endnoteReference": "endnote"}


@dataclass
class _Paragraph:
    style_id: str | None = None
    num_id: str | None = None
    ilvl: str | None = None
    closing: str | None = None  # set once the paragraph's opening tags were written


class DocxHtml:
    """Turns the XML events of one story (body or note) into mammoth's HTML, piece by piece."""

    def __init__(self, defs: Definitions) -> None:
        self.defs = defs
        self.out: list[str] = []
        self.size = 0
        self.note_refs: list[tuple[str, str]] = []
        self._lists: list[bool] = []  # open lists, innermost last: ordered?
        self._cells: list[bool] = []  # open table cells: <td> written?
        self._merged = False  # the current cell continues a vertical merge (mammoth drops it)
        self._para: _Paragraph | None = None
        self._depth = 0  # paragraphs open (text boxes nest them)
        self._skip = 0

    def write(self, html: str) -> None:
        self.out.append(html)
        self.size += len(html)

    def take(self) -> str:
        html, self.out, self.size = "".join(self.out), [], 0
        return html

    def start(self, element: ElementTree.Element) -> None:
        tag = element.tag
        if tag in SKIPPED or self._skip:
            self._skip += tag in SKIPPED
            return
        if tag == f"{W}p":
            self._depth += 1
            if self._depth == 1:
                self._open_cell()
                self._para = _Paragraph()
        elif self._depth:
            return
        elif tag == f"{W}tbl":
            self._open_cell()
            self._close_lists()
            self.write("<table>")
        elif tag == f"{W}tr":
            self.write("<tr>")
        elif tag == f"{W}tc":
            self._close_lists()
            self._cells.append(False)
            self._merged = False

    def end(self, element: ElementTree.Element) -> None:
        tag = element.tag
        if tag in SKIPPED:
            self._skip -= 1
            return
        if self._skip:
            return
        if self._depth:
            self._in_paragraph(element)
        elif tag == f"{W}tbl":
            self._close_lists()
            self.write("</table>")
        elif tag == f"{W}tr":
            self.write("</tr>")
        elif tag == f"{W}tcPr":
            merge = element.find(f"{W}vMerge")
            self._merged = merge is not None and attr(merge) != "restart"
        elif tag == f"{W}tc":
            self._open_cell()
            self._close_lists()
            if self._cells.pop():
                self.write("</td>")

    def finish(self) -> None:
        self._close_lists()

    def _in_paragraph(self, element: ElementTree.Element) -> None:
        tag, para = element.tag, self._para
        assert para is not None
        if tag == f"{W}p":
            self._depth -= 1
            if self._depth == 0:
                if para.closing:
                    self.write(para.closing)
                self._para = None
        elif tag == f"{W}t":
            if element.text:
                self._text(escape(element.text, quote=False))
        elif tag in TEXT_CHARS:
            self._text(TEXT_CHARS[tag])
        elif tag in (f"{W}br", f"{W}cr"):
            if attr(element, "type") in (None, "textWrapping"):
                self._text("<br />")
        elif tag in NOTES:
            note_id = attr(element, "id")
            if note_id is not None:
                self.note_refs.append((NOTES[tag], note_id))
                if len(self.note_refs) > MAX_DEFINITIONS:
                    raise PermanentError(f"DOCX has more than {MAX_DEFINITIONS} notes")
                self._text(f"<sup>[{len(self.note_refs)}]</sup>")
        elif tag == f"{W}pPr" and self._depth == 1:
            para.style_id = attr(element.find(f"{W}pStyle"))
            para.num_id = attr(element.find(f"{W}numPr/{W}numId"))
            para.ilvl = attr(element.find(f"{W}numPr/{W}ilvl"))

    def _text(self, html: str) -> None:
        para = self._para
        if para is not None and para.closing is None:
            para.closing = self._open_paragraph(para)
        self.write(html)

    def _open_paragraph(self, para: _Paragraph) -> str:
        """Write the paragraph's opening tags (lists as needed); return its closing tags."""
        heading = self.defs.heading(para.style_id)
        if heading is not None:
            self._close_lists()
            self.write(f"<h{heading}>")
            return f"</h{heading}>"
        level = self.defs.list_level(para.style_id, para.num_id, para.ilvl)
        if level is None:
            self._close_lists()
            self.write("<p>")
            return "</p>"
        depth = int(level[0]) + 1 if level[0].isdigit() else 1
        while len(self._lists) > depth:
            self._close_list()
        if len(self._lists) == depth and self._lists[-1] != level[1]:
            self._close_list()
        if len(self._lists) == depth:
            self.write("</li><li>")
        while len(self._lists) < depth:
            ordered = level[1] if len(self._lists) == depth - 1 else False
            self.write("<ol><li>" if ordered else "<ul><li>")
            self._lists.append(ordered)
        return ""

    def _close_list(self) -> None:
        self.write("</li></ol>" if self._lists.pop() else "</li></ul>")

    def _close_lists(self) -> None:
        while self._lists:
            self._close_list()

    def _open_cell(self) -> None:
        if self._cells and not self._cells[-1] and not self._merged:
            self._cells[-1] = True
            self.write("<td>")


def stream_pages(archive: zipfile.ZipFile, names: set[str], max_chars: int) -> Iterator[Page]:
    """The document's text as pages (see ``Pieces``), read with bounded memory."""
    defs = read_definitions(archive, names)
    renderer = HtmlText()
    pieces = Pieces(max_chars)
    body = DocxHtml(defs)
    with archive.open("word/document.xml") as part:
        yield from _story(events(part), body, renderer, pieces)
    if body.note_refs:
        yield from _notes(archive, names, defs, body.note_refs, renderer, pieces)
    renderer.close()
    yield from pieces.add(renderer.take())
    yield from pieces.finish()


def _story(
    events: Iterator[tuple[str, ElementTree.Element]],
    story: DocxHtml,
    renderer: HtmlText,
    pieces: Pieces,
) -> Iterator[Page]:
    for event, element in events:
        if event == "start":
            story.start(element)
        else:
            story.end(element)
        if story.size >= FEED_CHARS:
            renderer.feed(story.take())
            yield from pieces.add(renderer.take())
    story.finish()
    renderer.feed(story.take())


def _notes(
    archive: zipfile.ZipFile,
    names: set[str],
    defs: Definitions,
    refs: list[tuple[str, str]],
    renderer: HtmlText,
    pieces: Pieces,
) -> Iterator[Page]:
    """Referenced notes as mammoth lists them: ``<ol>``, one item per note.

    Each notes part is read as a stream, once per run of references of its
    kind, and its referenced notes are written in file order.
    """
    renderer.feed("<ol>")
    for kind, ids in _runs(refs):
        part_name = f"word/{kind}s.xml"
        if part_name not in names:
            continue
        wanted, inside = set(ids), False
        note = DocxHtml(defs)
        with archive.open(part_name) as part:
            for event, element in events(part):
                if element.tag != f"{W}{kind}":
                    if inside:
                        (note.start if event == "start" else note.end)(element)
                elif event == "start":
                    inside = attr(element, "id") in wanted
                    note.write("<li>" if inside else "")
                elif inside:
                    inside = False
                    note.finish()
                    note.write("</li>")
                    renderer.feed(note.take())
                    yield from pieces.add(renderer.take())
    renderer.feed("</ol>")


def _runs(refs: list[tuple[str, str]]) -> Iterator[tuple[str, list[str]]]:
    """Consecutive references of one kind, as (kind, ids)."""
    kind, ids = refs[0][0], [refs[0][1]]
    for next_kind, note_id in refs[1:]:
        if next_kind != kind:
            yield kind, ids
            kind, ids = next_kind, []
        ids.append(note_id)
    yield kind, ids
