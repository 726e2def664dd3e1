"""``asset.process``: fetch → extract and chunk (CPU pool) → embed → store → follow-up job.

Memory stays bounded whatever the document's size: the extraction process
writes chunks to a temporary file as it reads pages; this side embeds them
``chunking.batch_size`` at a time into a vectors file (progress written as it
advances), then inserts them all in one short transaction that first claims
the job in the ledger and deletes the asset's old chunks.
"""

from __future__ import annotations

import asyncio
import tempfile
from array import array
from enum import Enum
from pathlib import Path
from typing import BinaryIO

import structlog

from handlers import ledger, tracing
from handlers.assets import store
from handlers.assets.extract import ExtractRequest, ExtractSummary, extract_to_file, read_chunks
from handlers.assets.fetch import fetch_to_file
from handlers.cpu_pool import CpuMemoryExceeded, CpuTimeout, CpuWorkerLost
from handlers.db import Pool
from handlers.deps import Deps
from handlers.errors import PermanentError, RetryableError
from handlers.types import Job, Outcome
from schemas.assets import AssetStatus, AssetStatusUpdate, StatusWriter
from schemas.envelope import JobEnvelope
from schemas.jobs import AssetProcess

log = structlog.get_logger(__name__)

KG_JOB_TYPE = "knowledge_graph.extract"
EXTRACTED_PERCENT = 10  # progress once the text is extracted
EMBEDDED_PERCENT = 95  # ... once every chunk is embedded; the insert transaction ends at 100
PROGRESS_STEP = 5  # write progress when it has moved this many points
PROGRESS_ACQUIRE_S = 1.0  # progress is best effort: never wait long for a connection


async def handle(job: Job[AssetProcess], deps: Deps) -> Outcome:
    """Index one asset; its chunks are replaced in one transaction with the ledger row."""
    asset = await _begin(job, deps)
    if asset is _Start.PROCESSED:
        await _publish_follow_up(job, deps)
        return Outcome.SKIPPED
    if asset is _Start.SUPERSEDED:
        return Outcome.SKIPPED
    with tempfile.TemporaryDirectory(prefix="conveyor-") as tmp:
        with tracing.span("asset.fetch") as span:
            source = await fetch_to_file(deps.http, asset.source_url, deps.fetch, Path(tmp))
            span.set("conveyor.asset.bytes", source.stat().st_size)
        chunks_path = Path(tmp) / "chunks.jsonl"
        with tracing.span("asset.extract", {"conveyor.asset.mime_type": asset.mime_type}):
            summary = await _extract(deps, source, asset.mime_type, chunks_path)
        source.unlink()
        count = await _store(job, deps, asset, chunks_path, summary)
    if count is None:
        await _settle_duplicate(job, deps)
        return Outcome.SKIPPED
    log.info("asset.indexed", asset_id=asset.id, chunks_count=count, pages=summary.page_count)
    await _publish_follow_up(job, deps)
    return Outcome.SUCCEEDED


class _Start(Enum):
    PROCESSED = "this job's effects are committed (ledger)"
    SUPERSEDED = "the asset's status is final from this run or a newer job"


async def _begin(job: Job[AssetProcess], deps: Deps) -> store.AssetRow | _Start:
    """Load the asset and mark it ``processing``, unless that would move its status back."""
    asset_id = job.payload.asset_id
    async with deps.db.acquire() as conn:
        asset = await store.load_asset(conn, asset_id)
        if asset is None:
            raise PermanentError(f"asset {asset_id} does not exist")
        if await ledger.processed_outcome(conn, job.id) is not None:
            return _Start.PROCESSED
        started = AssetStatusUpdate(status=AssetStatus.PROCESSING, progress=0)
        if not await store.set_status(conn, asset_id, started, writer(job)):
            log.info("asset.status_final", asset_id=asset_id, status=asset.status)
            return _Start.SUPERSEDED
    return asset


def writer(job: Job[AssetProcess]) -> StatusWriter:
    """This run of the job, as the writer of the asset's status."""
    return StatusWriter(job_id=job.id, origin=job.origin, created_at=job.created_at)


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
    except CpuMemoryExceeded as exc:
        raise PermanentError(
            f"the document {exc} to extract (the limit of each extraction process)"
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
    """Embed every chunk, then insert them all in one short transaction.

    Embedding comes first and outside the transaction: a rate-limited API can
    take minutes, and an open transaction that long would pin a pool
    connection, hold back vacuum and trip ``idle_in_transaction_session_timeout``.
    The vectors wait in a float32 file next to the chunks (``real[]`` is
    float32 too), so memory stays bounded. Returns None when another delivery
    of this job already stored the chunks.
    """
    vectors_path = chunks_path.with_suffix(".vectors")
    progress = _Progress(deps.db, asset.id, summary.chars, writer(job))
    await progress.write(EXTRACTED_PERCENT)
    with tracing.span("asset.embed", {"conveyor.asset.chunks": summary.chunks}):
        await _embed_to_file(deps, asset, chunks_path, vectors_path, progress)
    embedder = deps.embedder
    dims = embedder.dimensions
    count = 0
    async with deps.db.acquire() as conn, conn.transaction():
        if not await ledger.claim(conn, job.id, job.type):
            return None
        await store.delete_chunks(conn, asset.id)
        with vectors_path.open("rb") as vectors_file:
            for batch in read_chunks(chunks_path, deps.chunking.batch_size):
                vectors = _read_vectors(vectors_file, len(batch), dims)
                await store.insert_chunks(conn, asset, batch, vectors, embedder.model, dims)
                count += len(batch)
        done = AssetStatusUpdate(status=AssetStatus.COMPLETED, chunks_count=count, progress=100)
        await store.set_status(conn, asset.id, done, writer(job))
    return count


async def _embed_to_file(
    deps: Deps, asset: store.AssetRow, chunks_path: Path, out: Path, progress: _Progress
) -> None:
    """Embed the chunks batch by batch, appending each vector to ``out`` as float32."""
    with out.open("wb") as vectors_file:
        for batch in read_chunks(chunks_path, deps.chunking.batch_size):
            vectors = await deps.embedder.embed([c.text for c in batch], asset.organization_id)
            for vector in vectors:
                array("f", vector).tofile(vectors_file)
            await progress.at(batch[-1].char_end)
            await asyncio.sleep(0)  # a local embedder computes on the loop: let others run


def _read_vectors(vectors_file: BinaryIO, count: int, dims: int) -> list[list[float]]:
    """The next ``count`` vectors of ``dims`` float32 values written by ``_embed_to_file``."""
    values = array("f")
    values.fromfile(vectors_file, count * dims)
    return [values[i * dims : (i + 1) * dims].tolist() for i in range(count)]


class _Progress:
    """Writes the asset's progress percent, outside the job's transaction, as it advances."""

    def __init__(self, db: Pool, asset_id: str, total_chars: int, writer: StatusWriter) -> None:
        self._db = db
        self._asset_id = asset_id
        self._writer = writer
        self._total = max(total_chars, 1)
        self._last = 0

    async def at(self, chars_done: int) -> None:
        share = min(chars_done / self._total, 1.0)
        percent = EXTRACTED_PERCENT + int((EMBEDDED_PERCENT - EXTRACTED_PERCENT) * share)
        if percent - self._last >= PROGRESS_STEP:
            await self.write(percent)

    async def write(self, percent: int) -> None:
        self._last = percent
        update = AssetStatusUpdate(status=AssetStatus.PROCESSING, progress=percent)
        try:
            async with self._db.acquire(timeout=PROGRESS_ACQUIRE_S) as conn:
                await store.set_status(conn, self._asset_id, update, self._writer)
        except TimeoutError:
            log.debug("asset.progress_skipped", percent=percent)


async def _settle_duplicate(job: Job[AssetProcess], deps: Deps) -> None:
    """Another delivery of this job stored the chunks; undo our ``processing`` mark."""
    asset_id = job.payload.asset_id
    async with deps.db.acquire() as conn:
        count = await store.count_chunks(conn, asset_id)
        done = AssetStatusUpdate(status=AssetStatus.COMPLETED, chunks_count=count, progress=100)
        await store.set_status(conn, asset_id, done, writer(job))


async def on_give_up(job: Job[AssetProcess], summary: str, deps: Deps) -> None:
    """The job is being dead-lettered: the asset must not stay ``processing``."""
    async with deps.db.acquire() as conn:
        await store.set_status(
            conn,
            job.payload.asset_id,
            AssetStatusUpdate(status=AssetStatus.FAILED, error=readable(summary)),
            writer(job),
        )


def readable(summary: str, limit: int = 2000) -> str:
    """The dead-letter summary as the asset's error, bounded in length."""
    text = summary.strip() or "processing failed"
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
