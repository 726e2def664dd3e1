"""``asset.process``: fetch → extract and chunk (CPU pool) → embed → store → follow-up job.

Memory stays bounded whatever the document's size: the extraction process
writes chunks to a temporary file as it reads pages, and this side embeds
and inserts them ``chunking.batch_size`` at a time, inside one transaction
that first deletes the asset's old chunks and claims the job in the ledger.
Progress is written outside that transaction as it advances.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import structlog

from handlers import ledger
from handlers.assets import store
from handlers.assets.extract import ExtractRequest, ExtractSummary, extract_to_file, read_chunks
from handlers.assets.fetch import fetch_to_file
from handlers.cpu_pool import CpuTimeout, CpuWorkerLost
from handlers.deps import Deps
from handlers.errors import PermanentError, RetryableError
from handlers.types import Job, Outcome
from schemas.assets import AssetStatus, AssetStatusUpdate
from schemas.envelope import JobEnvelope
from schemas.jobs import AssetProcess

log = structlog.get_logger(__name__)

KG_JOB_TYPE = "knowledge_graph.extract"
EXTRACTED_PERCENT = 10  # progress once the text is extracted; storing fills the rest
PROGRESS_STEP = 5  # write progress when it has moved this many points
PROGRESS_ACQUIRE_S = 1.0  # progress is best effort: never wait long for a connection


async def handle(job: Job[AssetProcess], deps: Deps) -> Outcome:
    """Index one asset; its chunks are replaced in one transaction with the ledger row."""
    asset = await _begin(job, deps)
    if asset is None:
        await _publish_follow_up(job, deps)
        return Outcome.SKIPPED
    with tempfile.TemporaryDirectory(prefix="conveyor-") as tmp:
        source = await fetch_to_file(deps.http, asset.source_url, deps.fetch, Path(tmp))
        chunks_path = Path(tmp) / "chunks.jsonl"
        summary = await _extract(deps, source, asset.mime_type, chunks_path)
        source.unlink()
        count = await _store(job, deps, asset, chunks_path, summary)
    if count is None:
        await _settle_duplicate(deps, asset.id)
        return Outcome.SKIPPED
    log.info("asset.indexed", asset_id=asset.id, chunks_count=count, pages=summary.page_count)
    await _publish_follow_up(job, deps)
    return Outcome.SUCCEEDED


async def _begin(job: Job[AssetProcess], deps: Deps) -> store.AssetRow | None:
    """Load the asset and mark it ``processing``; None when this job already finished."""
    asset_id = job.payload.asset_id
    async with deps.db.acquire() as conn:
        asset = await store.load_asset(conn, asset_id)
        if asset is None:
            raise PermanentError(f"asset {asset_id} does not exist")
        if await ledger.processed_outcome(conn, job.id) is not None:
            return None
        await store.set_status(
            conn, asset_id, AssetStatusUpdate(status=AssetStatus.PROCESSING, progress=0)
        )
    return asset


async def _extract(deps: Deps, source: Path, mime_type: str, out: Path) -> ExtractSummary:
    """Extract and chunk in the CPU pool, never on the event loop."""
    if deps.cpu is None:
        raise RuntimeError("no CPU pool in Deps: extraction must not run on the event loop")
    request = ExtractRequest(
        str(source), mime_type, str(out), deps.extract, deps.chunking.size, deps.chunking.overlap
    )
    limit_s = deps.extract.time_limit_s
    try:
        summary = await deps.cpu.run(extract_to_file, request, timeout_s=limit_s)
    except CpuTimeout:
        raise PermanentError(
            f"extracting the text took longer than the {limit_s:g} s limit and was stopped;"
            " the file may be damaged or too complex"
        ) from None
    except CpuWorkerLost as exc:
        raise RetryableError(f"the extraction process stopped: {exc}") from None
    if summary.unreadable_pages:
        log.warning(
            "asset.pages_unreadable",
            count=len(summary.unreadable_pages),
            pages=list(summary.unreadable_pages[:20]),
        )
    log.info(
        "asset.extracted",
        kind=summary.kind,
        pages=summary.page_count,
        chunks=summary.chunks,
        chars=summary.chars,
    )
    return summary


async def _store(
    job: Job[AssetProcess],
    deps: Deps,
    asset: store.AssetRow,
    chunks_path: Path,
    summary: ExtractSummary,
) -> int | None:
    """Embed and insert the chunks batch by batch; None when another delivery did the job."""
    embedder = deps.embedder
    progress = _Progress(deps.db, asset.id, summary.chars)
    count = 0
    async with deps.db.acquire() as conn, conn.transaction():
        if not await ledger.claim(conn, job.id, job.type):
            return None
        await progress.write(EXTRACTED_PERCENT)
        await store.delete_chunks(conn, asset.id)
        for batch in read_chunks(chunks_path, deps.chunking.batch_size):
            vectors = await embedder.embed([c.text for c in batch], asset.organization_id)
            await store.insert_chunks(
                conn, asset, batch, vectors, embedder.model, embedder.dimensions
            )
            count += len(batch)
            await progress.at(batch[-1].char_end)
        done = AssetStatusUpdate(status=AssetStatus.COMPLETED, chunks_count=count, progress=100)
        await store.set_status(conn, asset.id, done)
    return count


class _Progress:
    """Writes the asset's progress percent, outside the job's transaction, as it advances."""

    def __init__(self, db: Any, asset_id: str, total_chars: int) -> None:
        self._db = db
        self._asset_id = asset_id
        self._total = max(total_chars, 1)
        self._last = 0

    async def at(self, chars_done: int) -> None:
        share = min(chars_done / self._total, 1.0)
        percent = EXTRACTED_PERCENT + int((99 - EXTRACTED_PERCENT) * share)
        if percent - self._last >= PROGRESS_STEP:
            await self.write(percent)

    async def write(self, percent: int) -> None:
        self._last = percent
        update = AssetStatusUpdate(status=AssetStatus.PROCESSING, progress=percent)
        try:
            async with self._db.acquire(timeout=PROGRESS_ACQUIRE_S) as conn:
                await store.set_status(conn, self._asset_id, update)
        except TimeoutError:
            log.debug("asset.progress_skipped", percent=percent)


async def _settle_duplicate(deps: Deps, asset_id: str) -> None:
    """Another delivery of this job stored the chunks; undo our ``processing`` mark."""
    async with deps.db.acquire() as conn:
        count = await store.count_chunks(conn, asset_id)
        done = AssetStatusUpdate(status=AssetStatus.COMPLETED, chunks_count=count, progress=100)
        await store.set_status(conn, asset_id, done)


async def on_give_up(job: Job[AssetProcess], reason: str, deps: Deps) -> None:
    """The job is being dead-lettered: the asset must not stay ``processing``."""
    async with deps.db.acquire() as conn:
        await store.set_status(
            conn,
            job.payload.asset_id,
            AssetStatusUpdate(status=AssetStatus.FAILED, error=readable(reason)),
        )


def readable(reason: str, limit: int = 2000) -> str:
    """The dead-letter reason as the asset's error: no taxonomy prefix, bounded length."""
    text = reason.removeprefix("permanent error: ").strip() or "processing failed"
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def _publish_follow_up(job: Job[AssetProcess], deps: Deps) -> None:
    """Publish the knowledge-graph job; its id is derived, so a re-publish is a no-op."""
    envelope = JobEnvelope(
        id=f"{job.id}:kg",
        type=KG_JOB_TYPE,
        organization_id=job.organization_id,
        payload={"asset_id": job.payload.asset_id},
    )
    await deps.publisher.publish(envelope, key=job.payload.asset_id.encode())
