"""``asset.process``: fetch → extract → chunk → embed → store → follow-up job."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import structlog

from handlers import ledger
from handlers.assets import store
from handlers.assets.chunking import chunk_pages
from handlers.assets.extract import extract_pages
from handlers.assets.fetch import fetch_to_file
from handlers.deps import Deps
from handlers.errors import PermanentError
from handlers.types import Job, Outcome
from schemas.assets import AssetStatus, AssetStatusUpdate
from schemas.envelope import JobEnvelope
from schemas.jobs import AssetProcess

log = structlog.get_logger(__name__)

KG_JOB_TYPE = "knowledge_graph.extract"


async def handle(job: Job[AssetProcess], deps: Deps) -> Outcome:
    """Index one asset; its chunks are replaced in one transaction with the ledger row."""
    asset_id = job.payload.asset_id
    async with deps.db.acquire() as conn:
        asset = await store.load_asset(conn, asset_id)
        if asset is None:
            raise PermanentError(f"asset {asset_id} does not exist")
        if await ledger.processed_outcome(conn, job.id) is not None:
            await _publish_follow_up(job, deps)
            return Outcome.SKIPPED
        await store.set_status(
            conn, asset_id, AssetStatusUpdate(status=AssetStatus.PROCESSING, progress=0)
        )
    with tempfile.TemporaryDirectory(prefix="conveyor-") as tmp:
        path = await fetch_to_file(deps.http, asset.source_url, deps.fetch, Path(tmp))
        pages = await asyncio.to_thread(extract_pages, path, asset.mime_type)
    chunks = chunk_pages(pages, deps.chunking.size, deps.chunking.overlap)
    if not chunks:
        raise PermanentError("file has no text to index")
    vectors = await deps.embedder.embed([c.text for c in chunks], asset.organization_id)
    async with deps.db.acquire() as conn, conn.transaction():
        if not await ledger.claim(conn, job.id, job.type):
            return Outcome.SKIPPED
        await store.replace_chunks(
            conn, asset, chunks, vectors, deps.embedder.model, deps.embedder.dimensions
        )
        await store.set_status(
            conn,
            asset_id,
            AssetStatusUpdate(status=AssetStatus.COMPLETED, chunks_count=len(chunks), progress=100),
        )
    log.info("asset.indexed", asset_id=asset_id, chunks_count=len(chunks))
    await _publish_follow_up(job, deps)
    return Outcome.SUCCEEDED


async def on_give_up(job: Job[AssetProcess], reason: str, deps: Deps) -> None:
    """The job is being dead-lettered: the asset must not stay ``processing``."""
    async with deps.db.acquire() as conn:
        await store.set_status(
            conn,
            job.payload.asset_id,
            AssetStatusUpdate(status=AssetStatus.FAILED, error=reason[:2000]),
        )


async def _publish_follow_up(job: Job[AssetProcess], deps: Deps) -> None:
    """Publish the knowledge-graph job; its id is derived, so a re-publish is a no-op."""
    envelope = JobEnvelope(
        id=f"{job.id}:kg",
        type=KG_JOB_TYPE,
        organization_id=job.organization_id,
        payload={"asset_id": job.payload.asset_id},
    )
    await deps.publisher.publish(envelope, key=job.payload.asset_id.encode())
