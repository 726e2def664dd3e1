"""SQL of the assets domain: named statements and small functions taking a connection."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from handlers.assets.chunking import Chunk
from schemas.assets import AssetStatusUpdate

LOAD_ASSET = """
SELECT id, organization_id, source_url, mime_type, filename, status
FROM assets WHERE id = $1
"""

UPDATE_STATUS = """
UPDATE assets
SET status = $2, error = $3, chunks_count = COALESCE($4, chunks_count),
    progress = COALESCE($5, progress), processed_at = COALESCE($6, processed_at),
    updated_at = now()
WHERE id = $1
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


async def load_asset(conn: Any, asset_id: str) -> AssetRow | None:
    row = await conn.fetchrow(LOAD_ASSET, asset_id)
    return None if row is None else AssetRow(**dict(row))


async def set_status(conn: Any, asset_id: str, update: AssetStatusUpdate) -> None:
    """The one way an asset's status changes."""
    processed_at = update.processed_at
    if processed_at is None and update.status in ("completed", "failed"):
        processed_at = datetime.now(UTC)
    await conn.execute(
        UPDATE_STATUS,
        asset_id,
        update.status.value,
        update.error,
        update.chunks_count,
        update.progress,
        processed_at,
    )


async def count_chunks(conn: Any, asset_id: str) -> int:
    return int(await conn.fetchval(COUNT_CHUNKS, asset_id))


async def delete_chunks(conn: Any, asset_id: str) -> None:
    """Drop the asset's chunks (first step of replacing them, in the job's transaction)."""
    await conn.execute(DELETE_CHUNKS, asset_id)


async def insert_chunks(
    conn: Any,
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
    await conn.copy_records_to_table("asset_chunks", records=records, columns=CHUNK_COLUMNS)
