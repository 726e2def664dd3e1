"""PDF and DOCX assets through the worker (real Kafka and Postgres), and every failed path."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from schemas.envelope import JobEnvelope
from tests.support.documents import DOCX_MIME, docx_bytes, pdf_bytes, zip_bomb_docx
from tests.support.http import FileServer, file_server
from tests.support.stack import Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

PDF = "application/pdf"


async def _asset(db: asyncpg.Pool, files: FileServer, name: str, body: bytes, mime: str) -> str:
    asset_id = f"x-{uuid.uuid4().hex[:12]}"
    await db.execute(
        "INSERT INTO assets (id, organization_id, source_url, mime_type) VALUES ($1,$2,$3,$4)",
        asset_id,
        "org-x",
        files.add(name, body, "application/octet-stream"),
        mime,
    )
    return asset_id


def _job(asset_id: str) -> JobEnvelope:
    return JobEnvelope(
        id=str(uuid.uuid4()),
        type="asset.process",
        organization_id="org-x",
        payload={"asset_id": asset_id},
    )


async def _ended(db: asyncpg.Pool, asset_id: str) -> dict[str, Any]:
    async def row() -> dict[str, Any]:
        found = await db.fetchrow("SELECT * FROM assets WHERE id = $1", asset_id)
        return dict(found) if found else {}

    return await eventually(
        row, lambda r: r.get("status") in ("completed", "failed"), what=f"{asset_id} ended"
    )


async def _chunks(db: asyncpg.Pool, asset_id: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT * FROM asset_chunks WHERE asset_id = $1 ORDER BY chunk_index", asset_id
    )


async def test_pdf_and_docx_complete_and_every_bad_file_fails_readably(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any
) -> None:
    bad = {
        "encrypted.pdf": (pdf_bytes(2, owner_password="o", user_password="u"), PDF),
        "not-a.pdf": (b"hello, I am text", PDF),
        "damaged.pdf": (b"%PDF-1.7\n" + bytes(range(256)) * 20, PDF),
        "long.pdf": (pdf_bytes(6), PDF),
        "scan.pdf": (pdf_bytes(1, blank=True), PDF),
        "bomb.docx": (zip_bomb_docx(8 * 2**20), DOCX_MIME),
        "picture.png": (b"\x89PNG\r\n\x1a\n", "image/png"),
    }
    expected = {
        "encrypted.pdf": "PDF is encrypted: remove the password and upload it again",
        "not-a.pdf": "file declared as application/pdf is not a PDF",
        "damaged.pdf": "PDF is damaged and cannot be read",
        "long.pdf": "PDF has 6 pages; limit is 5",
        "scan.pdf": "PDF has no extractable text",
        "bomb.docx": "DOCX part word/media/blob.bin is compressed",
        "picture.png": "unsupported file type 'image/png'",
    }
    async with file_server() as files:
        pdf = await _asset(db, files, "report.pdf", pdf_bytes(5, words_per_page=150), PDF)
        doc = await _asset(db, files, "report.docx", docx_bytes(10), DOCX_MIME)
        failing = {name: await _asset(db, files, name, *body) for name, body in bad.items()}
        worker = worker_factory(stack, CONVEYOR_EXTRACT__MAX_PAGES="5")
        worker.wait_ready()
        stack.publish([_job(a) for a in (pdf, doc, *failing.values())])

        row = await _ended(db, pdf)
        assert row["status"] == "completed" and row["progress"] == 100, row
        chunks = await _chunks(db, pdf)
        assert row["chunks_count"] == len(chunks) > 5
        assert {c["page_start"] for c in chunks} == {1, 2, 3, 4, 5}
        for c in chunks:
            for n in range(1, 6):
                if f"page {n} marker" in c["content"]:
                    assert c["page_start"] <= n <= c["page_end"]

        row = await _ended(db, doc)
        assert row["status"] == "completed", row
        chunks = await _chunks(db, doc)
        assert chunks[0]["content"].startswith("# Quarterly Report")
        assert "- first finding" in chunks[0]["content"]
        assert all(c["page_start"] is None for c in chunks)

        for name, asset_id in failing.items():
            row = await _ended(db, asset_id)
            assert row["status"] == "failed", (name, row)
            assert row["error"].startswith(expected[name]), (name, row["error"])
            assert "Traceback" not in row["error"] and "permanent error" not in row["error"]
            assert await _chunks(db, asset_id) == []


async def test_time_limits_end_in_failed_never_processing(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any
) -> None:
    async with file_server() as files:
        slow = await _asset(db, files, "slow.pdf", pdf_bytes(40), PDF)
        hung = await _asset(db, files, "hung.pdf", b"", PDF)
        files.faults["hung.pdf"] = "hang"
        worker = worker_factory(
            stack,
            CONVEYOR_EXTRACT__TIME_LIMIT_S="0.001",
            CONVEYOR_JOBS__ASSET_PROCESS__TIMEOUT_S="2",
            CONVEYOR_JOBS__ASSET_PROCESS__MAX_ATTEMPTS="1",
        )
        worker.wait_ready()
        stack.publish([_job(slow), _job(hung)])

        row = await _ended(db, slow)
        assert row["status"] == "failed"
        assert row["error"].startswith("extracting the text took longer than the 0.001 s limit")
        row = await _ended(db, hung)
        assert row["status"] == "failed"
        assert "JobTimeout: job ran past its 2.0 s timeout" in row["error"]
