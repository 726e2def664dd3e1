"""Test documents generated on the fly (fpdf2, python-docx, zipfile): no binary fixtures."""

from __future__ import annotations

import io
import random
import zipfile

import docx
from fpdf import FPDF
from fpdf.enums import EncryptionMethod

DOCX_MIME = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def words(n: int, seed: int = 1, prefix: str = "w") -> str:
    rnd = random.Random(seed)
    return " ".join(f"{prefix}{rnd.randint(0, 99_999)}" for _ in range(n))


def pdf_bytes(
    pages: int,
    words_per_page: int = 120,
    *,
    blank: bool = False,
    owner_password: str | None = None,
    user_password: str | None = None,
    aes: bool = False,
) -> bytes:
    """A PDF whose page N starts with ``page N marker``; ``blank`` pages carry no text."""
    pdf = FPDF()
    pdf.set_font("helvetica", size=10)
    if owner_password is not None:
        method = EncryptionMethod.AES_256 if aes else EncryptionMethod.RC4
        pdf.set_encryption(
            owner_password=owner_password, user_password=user_password, encryption_method=method
        )
    for number in range(1, pages + 1):
        pdf.add_page()
        if not blank:
            text = f"page {number} marker. " + words(words_per_page, seed=number)
            pdf.multi_cell(0, 5, text)
    return bytes(pdf.output())


def docx_bytes(paragraphs: int = 12, words_per_paragraph: int = 60) -> bytes:
    """A DOCX with a title heading, a subheading, a bullet list and body paragraphs."""
    document = docx.Document()
    document.add_heading("Quarterly Report", level=1)
    document.add_paragraph("Intro paragraph about the report.")
    document.add_heading("Findings", level=2)
    for item in ("first finding", "second finding"):
        document.add_paragraph(item, style="List Bullet")
    for i in range(paragraphs):
        document.add_paragraph(f"body{i} " + words(words_per_paragraph, seed=i))
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def docx_words(total_words: int, seed: int = 1) -> bytes:
    """A long DOCX of ~``total_words`` words: sections of headings, paragraphs and lists."""
    document = docx.Document()
    written = i = 0
    while written < total_words:
        if i % 20 == 0:
            document.add_heading(f"Section {i // 20}", level=1)
        elif i % 7 == 0:
            document.add_paragraph(words(12, seed=seed + i), style="List Bullet")
            written += 12
        else:
            document.add_paragraph(words(100, seed=seed + i))
            written += 100
        i += 1
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def zip_bomb_docx(member_bytes: int, *, compressible: bool = True) -> bytes:
    """A zip with word/document.xml and one extra member of ``member_bytes`` bytes.

    Compressible members (zeros) shrink about 1000:1; incompressible ones
    (random bytes) keep their size.
    """
    out = io.BytesIO()
    rnd = random.Random(7)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", "<w:document/>")
        with archive.open("word/media/blob.bin", "w", force_zip64=True) as member:
            block = 1024 * 1024
            left = member_bytes
            while left > 0:
                size = min(block, left)
                member.write(bytes(size) if compressible else rnd.randbytes(size))
                left -= size
    return out.getvalue()


def docx_from_xml(document_xml: str | bytes, **parts: str | bytes) -> bytes:
    """A minimal DOCX archive around a hand-written ``word/document.xml`` (and other parts)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/'
            '2006/content-types"><Default Extension="xml" ContentType="application/xml"/>'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
            'relationships+xml"/><Override PartName="/word/document.xml" ContentType="'
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"
            '"/></Types>',
        )
        archive.writestr(
            "_rels/.rels",
            '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/'
            'package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.'
            "openxmlformats.org/officeDocument/2006/relationships/officeDocument"
            '" Target="word/document.xml"/></Relationships>',
        )
        archive.writestr("word/document.xml", document_xml)
        for name, body in parts.items():
            archive.writestr(name, body)
    return out.getvalue()


W_NS = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"


def entity_expansion_docx(levels: int = 4, fan_out: int = 10, paragraphs: int = 15) -> bytes:
    """A ~1.3 KB DOCX whose document.xml expands nested internal entities ("billion laughs").

    Each paragraph references the top entity, which expands to
    ``fan_out ** levels`` copies of a 50-character line: with the defaults,
    15 paragraphs of 510,000 characters each (7.6 M characters from under
    1 KB). expat's amplification limit only applies past 8 MiB of output.
    """
    entities = ['<!ENTITY e0 "All work and no play makes Jack a dull boy, again. ">']
    for level in range(1, levels + 1):
        entities.append(f'<!ENTITY e{level} "{f"&e{level - 1};" * fan_out}">')
    body = f"<w:p><w:r><w:t>&e{levels};</w:t></w:r></w:p>" * paragraphs
    xml = (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        f"<!DOCTYPE w:document [{''.join(entities)}]>"
        f'<w:document xmlns:w="{W_NS}"><w:body>{body}</w:body></w:document>'
    )
    return docx_from_xml(xml)


def pdf_with_glyphs(pages: list[list[bytes]]) -> bytes:
    """A hand-written PDF: each page shows its lines (WinAnsi bytes) in Helvetica.

    Bytes 0x80 and 0x81 are remapped to the ``fi`` and ``fl`` ligature glyphs
    (as TeX and many typesetters do), so extraction must recover ligatures;
    WinAnsi's accented letters (0xE9 é, ...) are kept.
    """
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",  # the page tree, once the pages are numbered
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding << /Type /Encoding"
        b" /BaseEncoding /WinAnsiEncoding /Differences [128 /fi /fl] >> >>",
    ]
    kids = []
    for lines in pages:
        shown = b"".join(
            b"("
            + line.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")
            + b") Tj 0 -16 Td "
            for line in lines
        )
        content = b"BT /F1 12 Tf 72 720 Td " + shown + b"ET"
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources"
            b" << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % len(objects)
        )
        kids.append(b"%d 0 R" % len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), len(kids))
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(
        b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    )
    return out.getvalue()


def formatted_docx(xml_mib: float, seed: int = 1) -> bytes:
    """A DOCX whose document.xml is ~``xml_mib`` MiB of heavily formatted text.

    Every word sits in its own run with Word's usual run properties (fonts,
    size, language, revision ids), so text is ~3 % of the XML, as in documents
    edited with tracked formatting: a 200 MiB document.xml holds ~6 M
    characters, inside the default character cap.
    """
    rnd = random.Random(seed)
    head = (
        f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<w:document xmlns:w="{W_NS}">'
        "<w:body>"
    )
    run = (
        '<w:r w:rsidRPr="00{rsid:06X}"><w:rPr><w:rFonts w:ascii="Calibri" w:hAnsi="Calibri"'
        ' w:cs="Calibri"/><w:color w:val="1F2937"/><w:sz w:val="22"/><w:szCs w:val="22"/>'
        '<w:lang w:val="en-US"/></w:rPr><w:t xml:space="preserve">{text} </w:t></w:r>'
    )
    target = int(xml_mib * 2**20) - 1024  # the other parts fit in the rest of the MiB
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("word/document.xml", "w", force_zip64=True) as part:
            written = part.write(head.encode())
            number = 0
            tail = b"</w:body></w:document>"
            while True:
                number += 1
                if number % 30 == 1:
                    para = f'<w:p><w:pPr><w:pStyle w:val="Heading1"/></w:pPr>{run}</w:p>'.format(
                        rsid=number, text=f"Section {number // 30}"
                    )
                else:
                    runs = "".join(
                        run.format(rsid=rnd.randrange(2**24), text=words(1, seed=number * 40 + i))
                        for i in range(40)
                    )
                    para = (
                        f'<w:p w:rsidR="00{number:06X}"><w:pPr><w:spacing w:after="120"/>'
                        f"</w:pPr>{runs}</w:p>"
                    )
                if written + len(para) + len(tail) > target:
                    break
                written += part.write(para.encode())
            part.write(tail)
        archive.writestr("[Content_Types].xml", "<Types/>")
    return out.getvalue()
