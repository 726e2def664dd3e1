"""What a DOCX says about headings and lists (``styles.xml``, ``numbering.xml``), streamed.

``events`` reads any XML part as a stream: each element is dropped once it
ended, except inside the few elements whose handler looks into them
(properties, definitions), which are bounded in size. ``Definitions`` answers
the two questions mammoth's default style map asks of a paragraph: is it a
heading (by style id or name), and is it a list item (through numbering.xml,
by its own numbering or its style's), at which level, ordered or not.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO
from xml.etree import ElementTree

from handlers.errors import PermanentError

W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
MAX_DEFINITIONS = 50_000  # styles, numbering levels or note references kept in memory


def attr(element: ElementTree.Element | None, name: str = "val") -> str | None:
    return None if element is None else element.get(f"{W}{name}")


KEPT = frozenset({f"{W}pPr", f"{W}tcPr", f"{W}style", f"{W}abstractNum", f"{W}num", f"{W}lvl"})
MAX_KEPT = 10_000  # elements inside one kept element (a paragraph's properties...)


def events(part: IO[bytes]) -> Iterator[tuple[str, ElementTree.Element]]:
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
            for event, element in events(part):
                if event == "end" and element.tag == f"{W}style":
                    _read_style(defs, element)
    if "word/numbering.xml" in names:
        with archive.open("word/numbering.xml") as part:
            for event, element in events(part):
                if event == "end" and element.tag == f"{W}abstractNum":
                    _read_abstract(defs, element)
                elif event == "end" and element.tag == f"{W}num":
                    abstract = attr(element.find(f"{W}abstractNumId"))
                    number = attr(element, "numId")
                    if number is not None and abstract is not None:
                        defs.nums[number] = abstract
                        defs.check()
    return defs


def _read_style(defs: Definitions, element: ElementTree.Element) -> None:
    style_id = attr(element, "styleId")
    if style_id is None:
        return
    name = attr(element.find(f"{W}name"))
    if name is not None and element.get(f"{W}type") == "paragraph":
        defs.style_names[style_id] = name
    if element.get(f"{W}type") == "numbering":
        num_id = attr(element.find(f"{W}pPr/{W}numPr/{W}numId"))
        if num_id is not None:
            defs.numbering_style_num[style_id] = num_id
    defs.check()


def _read_abstract(defs: Definitions, element: ElementTree.Element) -> None:
    abstract = attr(element, "abstractNumId")
    if abstract is None:
        return
    levels: dict[str, bool] = {}
    for level in element.findall(f"{W}lvl"):
        ilvl = attr(level, "ilvl")
        ordered = attr(level.find(f"{W}numFmt")) != "bullet"
        if ilvl is None:
            levels.setdefault("0", ordered)
            continue
        levels[ilvl] = ordered
        style = attr(level.find(f"{W}pStyle"))
        if style is not None:
            defs.level_by_style.setdefault(style, (ilvl, ordered))
    defs.levels[abstract] = levels
    link = attr(element.find(f"{W}numStyleLink"))
    if link is not None:
        defs.style_links[abstract] = link
    defs.check()
