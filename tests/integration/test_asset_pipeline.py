"""asset.process end to end: real Kafka, real Postgres, the worker as a subprocess."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from schemas.envelope import JobEnvelope
from tests.support.http import file_server
from tests.support.stack import Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

TEXT = "\n\n".join(
    f"Paragraph {p}. " + " ".join(f"term{p}_{w}" for w in range(120)) for p in range(6)
)


async def _insert_asset(db: asyncpg.Pool, url: str, mime: str) -> str:
    asset_id = f"a-{uuid.uuid4().hex[:12]}"
    await db.execute(
        "INSERT INTO assets (id, organization_id, source_url, mime_type) VALUES ($1,$2,$3,$4)",
        asset_id,
        "org-1",
        url,
        mime,
    )
    return asset_id


def _job(asset_id: str, job_id: str | None = None) -> JobEnvelope:
    return JobEnvelope(
        id=job_id or str(uuid.uuid4()),
        type="asset.process",
        organization_id="org-1",
        payload={"asset_id": asset_id},
    )


async def _asset(db: asyncpg.Pool, asset_id: str) -> dict[str, Any]:
    row = await db.fetchrow("SELECT * FROM assets WHERE id = $1", asset_id)
    return dict(row) if row else {}


async def test_text_and_markdown_assets_are_chunked_and_completed(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any
) -> None:
    async with file_server() as files:
        plain = await _insert_asset(db, files.add("notes.txt", TEXT.encode()), "text/plain")
        md = await _insert_asset(
            db,
            files.add("readme.md", b"# Title\n\n" + TEXT.encode(), "text/markdown"),
            "text/markdown",
        )
        missing = await _insert_asset(db, files.url("gone.txt"), "text/plain")
        worker = worker_factory(stack)
        worker.wait_ready()
        stack.publish([_job(plain), _job(md), _job(missing)])

        for asset_id in (plain, md):
            row = await eventually(
                lambda a=asset_id: _asset(db, a),
                lambda r: r.get("status") == "completed",
                what=f"asset {asset_id} completed",
            )
            chunks = await db.fetch(
                "SELECT * FROM asset_chunks WHERE asset_id = $1 ORDER BY chunk_index", asset_id
            )
            assert row["chunks_count"] == len(chunks) > 1
            assert row["progress"] == 100 and row["error"] is None
            assert all(len(c["content"]) <= 600 for c in chunks)
            assert all(len(c["embedding"]) == c["embedding_dims"] == 256 for c in chunks)
            assert "term0_0" in chunks[0]["content"]
            assert "term5_119" in chunks[-1]["content"]

        failed = await eventually(
            lambda: _asset(db, missing),
            lambda r: r.get("status") == "failed",
            what="404 asset failed",
        )
        assert "HTTP 404" in failed["error"]
        assert "Traceback" not in failed["error"]


async def test_reprocessing_leaves_exactly_one_set_of_chunks(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any
) -> None:
    async with file_server() as files:
        asset_id = await _insert_asset(db, files.add("a.txt", TEXT.encode()), "text/plain")
        worker = worker_factory(stack)
        worker.wait_ready()
        first = _job(asset_id)
        stack.publish([first, first, _job(asset_id)])  # a duplicate delivery and a re-run
        await eventually(
            lambda: db.fetchval("SELECT count(*) FROM processed_jobs WHERE job_id LIKE $1", "%"),
            lambda n: n >= 0,
        )
        await eventually(
            lambda: db.fetchval(
                "SELECT count(*) FROM processed_jobs WHERE job_type = 'knowledge_graph.extract'"
                " AND job_id LIKE ANY($1)",
                [f"{first.id}:kg"],
            ),
            lambda n: n == 1,
            what="follow-up knowledge-graph job recorded",
        )
        row = await eventually(
            lambda: _asset(db, asset_id), lambda r: r.get("status") == "completed"
        )
        count = await db.fetchval("SELECT count(*) FROM asset_chunks WHERE asset_id = $1", asset_id)
        assert count == row["chunks_count"]
        indexes = await db.fetch(
            "SELECT chunk_index FROM asset_chunks WHERE asset_id = $1 ORDER BY 1", asset_id
        )
        assert [r["chunk_index"] for r in indexes] == list(range(count))
