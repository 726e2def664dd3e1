"""SQL of the assets domain: named statements and small functions taking a connection."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from handlers import tracing
from handlers.assets.chunking import Chunk
from handlers.db import Connection
from schemas.assets import AssetStatusUpdate, StatusWriter

LOAD_ASSET = """
SELECT id, organization_id, source_url, mime_type, filename, status
FROM assets WHERE id = $1
"""

# Status only moves forward. A write is refused when the asset's status is
# final (completed, failed) and was written by a newer job, or by the same job
# when the write is ``processing`` over ``completed``, ``processing`` over
# ``failed`` from the same run (a stale copy; a replay from the dead-letter
# topic is a new run and may reopen it), or ``failed`` over ``completed``.
UPDATE_STATUS = """
UPDATE assets
SET status = $2, error = $3, chunks_count = COALESCE($4, chunks_count),
    progress = COALESCE($5, progress), processed_at = COALESCE($6, processed_at),
    status_job_id = $7, status_job_origin = $8, status_job_created_at = $9,
    updated_at = now()
WHERE id = $1
  AND NOT COALESCE(
    status IN ('completed', 'failed') AND (
      status_job_created_at > $9
      OR (status_job_id = $7 AND (
        ($2 = 'processing' AND (status = 'completed' OR status_job_origin = $8))
        OR ($2 = 'failed' AND status = 'completed')
      ))
    ),
    false)
RETURNING true
"""

DELETE_CHUNKS = "DELETE FROM asset_chunks WHERE asset_id = $1"

COUNT_CHUNKS = "SELECT count(*) FROM asset_chunks WHERE asset_id = $1"

CHUNK_COLUMNS = (
    "asset_id",
    "chunk_index",
    "organization_id",
    "content",
    "page_start",
    "page_end",
    "char_start",
    "char_end",
    "embedding",
    "embedding_model",
    "embedding_dims",
)


@dataclass(frozen=True, slots=True)
class AssetRow:
    id: str
    organization_id: str
    source_url: str
    mime_type: str
    filename: str | None
    status: str


async def load_asset(conn: Connection, asset_id: str) -> AssetRow | None:
    row = await conn.fetchrow(LOAD_ASSET, asset_id)
    return None if row is None else AssetRow(**dict(row))


async def set_status(
    conn: Connection, asset_id: str, update: AssetStatusUpdate, writer: StatusWriter
) -> bool:
    """The one way an asset's status changes; False when it would move backwards.

    See ``UPDATE_STATUS`` for what counts as backwards.
    """
    processed_at = update.processed_at
    if processed_at is None and update.status in ("completed", "failed"):
        processed_at = datetime.now(UTC)
    applied = await conn.fetchval(
        UPDATE_STATUS,
        asset_id,
        update.status.value,
        update.error,
        update.chunks_count,
        update.progress,
        processed_at,
        writer.job_id,
        writer.origin,
        writer.created_at,
    )
    return bool(applied)


async def count_chunks(conn: Connection, asset_id: str) -> int:
    return int(await conn.fetchval(COUNT_CHUNKS, asset_id))


async def delete_chunks(conn: Connection, asset_id: str) -> None:
    """Drop the asset's chunks (first step of replacing them, in the job's transaction)."""
    await conn.execute(DELETE_CHUNKS, asset_id)


async def insert_chunks(
    conn: Connection,
    asset: AssetRow,
    chunks: list[Chunk],
    vectors: list[list[float]],
    model: str,
    dims: int,
) -> None:
    """Insert one batch of chunks with their embeddings (COPY; in the job's transaction)."""
    records = [
        (
            asset.id,
            c.index,
            asset.organization_id,
            c.text,
            c.page_start,
            c.page_end,
            c.char_start,
            c.char_end,
            vec,
            model,
            dims,
        )
        for c, vec in zip(chunks, vectors, strict=True)
    ]
    with tracing.db("COPY", "asset_chunks"):  # COPY is not seen by the query logger
        await conn.copy_records_to_table("asset_chunks", records=records, columns=CHUNK_COLUMNS)
