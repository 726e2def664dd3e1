"""Asset rows for tests: one insert, a fresh id."""

from __future__ import annotations

import uuid

import asyncpg


async def insert_asset(
    db: asyncpg.Pool, url: str, *, org: str = "org-1", mime: str = "text/plain"
) -> str:
    """Insert a ``pending`` asset pointing at ``url``; return its new id."""
    asset_id = f"a-{uuid.uuid4().hex[:12]}"
    await db.execute(
        "INSERT INTO assets (id, organization_id, source_url, mime_type) VALUES ($1, $2, $3, $4)",
        asset_id,
        org,
        url,
        mime,
    )
    return asset_id
