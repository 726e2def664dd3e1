"""Large DOCX files: ``word/document.xml`` read as a stream, in bounded memory.

mammoth builds the whole XML tree (~26 bytes of memory per byte of XML), so
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
from dataclasses import dataclass, field
from html import escape
from typing import IO
from xml.etree import ElementTree

from handlers.assets.chunking import Page
from handlers.assets.formats.html import HtmlText
from handlers.assets.formats.text import Pieces
from handlers.errors import PermanentError

W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
MC = "{http://schemas.openxmlformats.org/markup-compatibility/2006}"
MAX_DEFINITIONS = 50_000  # styles, numbering levels or note references kept in memory
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


def _attr(element: ElementTree.Element | None, name: str = "val") -> str | None:
    return None if element is None else element.get(f"{W}{name}")


KEPT = frozenset({f"{W}pPr", f"{W}tcPr", f"{W}style", f"{W}abstractNum", f"{W}num", f"{W}lvl"})
MAX_KEPT = 10_000  # elements inside one kept element (a paragraph's properties...)


def _events(part: IO[bytes]) -> Iterator[tuple[str, ElementTree.Element]]:
    """iterparse's events; each element is removed from its parent once it ended.

    Elements inside a ``KEPT`` one (properties, definitions) stay until it
    ends, so its handler can look into it.
    """
    stack: list[ElementTree.Element] = []
    kept = held = 0
    for event, element in ElementTree.iterparse(part, events=("start", "end")):
        if event == "start":
            stack.append(element)
            kept += element.tag in KEPT
            held += kept > 0
            if held > MAX_KEPT:
                raise PermanentError(
                    f"DOCX has an element with more than {MAX_KEPT} properties;"
                    " it cannot be a real Word document"
                )
            yield event, element
            continue
        yield event, element
        stack.pop()
        if element.tag in KEPT:
            kept -= 1
        if kept == 0:
            held = 0
            if stack:
                stack[-1].remove(element)


@dataclass
class Definitions:
    """What ``styles.xml`` and ``numbering.xml`` say about headings and lists."""

    style_names: dict[str, str] = field(default_factory=dict)
    numbering_style_num: dict[str, str] = field(default_factory=dict)
    levels: dict[str, dict[str, bool]] = field(default_factory=dict)  # abstract -> ilvl -> ordered
    style_links: dict[str, str] = field(default_factory=dict)  # abstract -> numbering style id
    nums: dict[str, str] = field(default_factory=dict)  # num -> abstract
    level_by_style: dict[str, tuple[str, bool]] = field(default_factory=dict)

    def count(self) -> int:
        return len(self.style_names) + len(self.nums) + sum(map(len, self.levels.values()))

    def heading(self, style_id: str | None) -> int | None:
        """mammoth's default style map: Heading1..6 by id, "Heading N"/"heading N" by name."""
        if style_id is None:
            return None
        name = self.style_names.get(style_id)
        for level in range(1, 7):
            if style_id == f"Heading{level}" or name in (f"Heading {level}", f"heading {level}"):
                return level
        if style_id == "Heading" or name == "Heading":
            return 1
        return None

    def find_level(self, num_id: str, ilvl: str) -> tuple[str, bool] | None:
        seen: set[str] = set()
        while num_id not in seen:
            seen.add(num_id)
            abstract = self.nums.get(num_id)
            if abstract is None or abstract not in self.levels:
                return None
            link = self.style_links.get(abstract)
            if link is None:
                ordered = self.levels[abstract].get(ilvl)
                return None if ordered is None else (ilvl, ordered)
            linked = self.numbering_style_num.get(link)
            if linked is None:
                return None
            num_id = linked
        return None

    def list_level(
        self, style_id: str | None, num_id: str | None, ilvl: str | None
    ) -> tuple[str, bool] | None:
        """(level index, ordered) of a paragraph, looked up as mammoth does."""
        if num_id is not None and ilvl is not None:
            return self.find_level(num_id, ilvl)
        if style_id is not None and style_id in self.level_by_style:
            return self.level_by_style[style_id]
        if num_id is not None:
            return self.find_level(num_id, "0")
        return None

    def check(self) -> None:
        if self.count() > MAX_DEFINITIONS:
            raise PermanentError(
                f"DOCX defines more than {MAX_DEFINITIONS} styles and list levels;"
                " it cannot be a real Word document"
            )


def read_definitions(archive: zipfile.ZipFile, names: set[str]) -> Definitions:
    defs = Definitions()
    if "word/styles.xml" in names:
        with archive.open("word/styles.xml") as part:
            for event, element in _events(part):
                if event == "end" and element.tag == f"{W}style":
                    _read_style(defs, element)
    if "word/numbering.xml" in names:
        with archive.open("word/numbering.xml") as part:
            for event, element in _events(part):
                if event == "end" and element.tag == f"{W}abstractNum":
                    _read_abstract(defs, element)
                elif event == "end" and element.tag == f"{W}num":
                    abstract = _attr(element.find(f"{W}abstractNumId"))
                    number = _attr(element, "numId")
                    if number is not None and abstract is not None:
                        defs.nums[number] = abstract
                        defs.check()
    return defs


def _read_style(defs: Definitions, element: ElementTree.Element) -> None:
    style_id = _attr(element, "styleId")
    if style_id is None:
        return
    name = _attr(element.find(f"{W}name"))
    if name is not None and element.get(f"{W}type") == "paragraph":
        defs.style_names[style_id] = name
    if element.get(f"{W}type") == "numbering":
        num_id = _attr(element.find(f"{W}pPr/{W}numPr/{W}numId"))
        if num_id is not None:
            defs.numbering_style_num[style_id] = num_id
    defs.check()


def _read_abstract(defs: Definitions, element: ElementTree.Element) -> None:
    abstract = _attr(element, "abstractNumId")
    if abstract is None:
        return
    levels: dict[str, bool] = {}
    for level in element.findall(f"{W}lvl"):
        ilvl = _attr(level, "ilvl")
        ordered = _attr(level.find(f"{W}numFmt")) != "bullet"
        if ilvl is None:
            levels.setdefault("0", ordered)
            continue
        levels[ilvl] = ordered
        style = _attr(level.find(f"{W}pStyle"))
        if style is not None:
            defs.level_by_style.setdefault(style, (ilvl, ordered))
    defs.levels[abstract] = levels
    link = _attr(element.find(f"{W}numStyleLink"))
    if link is not None:
        defs.style_links[abstract] = link
    defs.check()


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
            self._merged = merge is not None and _attr(merge) != "restart"
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
            if _attr(element, "type") in (None, "textWrapping"):
                self._text("<br />")
        elif tag in NOTES:
            note_id = _attr(element, "id")
            if note_id is not None:
                self.note_refs.append((NOTES[tag], note_id))
                if len(self.note_refs) > MAX_DEFINITIONS:
                    raise PermanentError(f"DOCX has more than {MAX_DEFINITIONS} notes")
                self._text(f"<sup>[{len(self.note_refs)}]</sup>")
        elif tag == f"{W}pPr" and self._depth == 1:
            para.style_id = _attr(element.find(f"{W}pStyle"))
            para.num_id = _attr(element.find(f"{W}numPr/{W}numId"))
            para.ilvl = _attr(element.find(f"{W}numPr/{W}ilvl"))

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
        yield from _story(_events(part), body, renderer, pieces)
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
            for event, element in _events(part):
                if element.tag != f"{W}{kind}":
                    if inside:
                        (note.start if event == "start" else note.end)(element)
                elif event == "start":
                    inside = _attr(element, "id") in wanted
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
