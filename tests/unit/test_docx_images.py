"""DOCX images are never opened: neither a linked (external) one nor an embedded one.

An external image link is how mammoth 1.10 was made to fetch a URL or read a
file (CVE-2025-11849). Extraction passes mammoth an image converter that
emits nothing, so no image is read; the document's text is indexed as usual.
"""

from __future__ import annotations

import asyncio
import io
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from handlers.assets.formats.docx import docx_pages
from tests.support.documents import docx_bytes
from tests.support.http import FileServer, file_server
from tests.support.policies import EXTRACT

RELS = "word/_rels/document.xml.rels"
IMAGE_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/image"
DRAWING = (
    '<w:p><w:r><w:drawing><wp:inline xmlns:wp="http://schemas.openxmlformats.org/'
    'drawingml/2006/wordprocessingDrawing"><wp:docPr id="9" name="Linked" descr="linked image"/>'
    '<a:graphic xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main"><a:graphicData>'
    '<pic:pic xmlns:pic="http://schemas.openxmlformats.org/drawingml/2006/picture">'
    '<pic:blipFill><a:blip r:link="rIdLinked"/></pic:blipFill></pic:pic>'
    "</a:graphicData></a:graphic></wp:inline></w:drawing></w:r></w:p>"
)


def docx_with_linked_image(target: str) -> bytes:
    """A python-docx document plus one image linked to ``target`` (TargetMode External)."""
    source = zipfile.ZipFile(io.BytesIO(docx_bytes(2)))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for info in source.infolist():
            data = source.read(info.filename).decode("utf-8", "surrogateescape")
            if info.filename == "word/document.xml":
                data = data.replace("<w:body>", "<w:body>" + DRAWING, 1)
            if info.filename == RELS:
                data = data.replace(
                    "</Relationships>",
                    f'<Relationship Id="rIdLinked" Type="{IMAGE_REL}" Target="{target}"'
                    ' TargetMode="External"/></Relationships>',
                )
            archive.writestr(info, data.encode("utf-8", "surrogateescape"))
    return out.getvalue()


@pytest.fixture
async def image_host() -> AsyncIterator[FileServer]:
    async with file_server(host="127.0.0.2") as files:
        files.add("img.png", b"\x89PNG\r\n\x1a\n", "image/png")
        yield files


async def test_a_linked_image_is_neither_fetched_nor_fatal(
    image_host: FileServer, tmp_path: Path
) -> None:
    path = tmp_path / "linked.docx"
    path.write_bytes(docx_with_linked_image(image_host.url("img.png")))
    # In a thread, as in the extraction process: a parser that did fetch the
    # image would reach the server rather than block this event loop.
    pages = await asyncio.to_thread(lambda: list(docx_pages(path, EXTRACT)))
    assert sum(len(page.text) for page in pages) > 200, "the document's text is extracted"
    assert image_host.hits == {}
