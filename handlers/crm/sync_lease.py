"""A CRM sync's lease on its connection in ``crm_connections`` (handlers/crm/sync.py):
claim it, check it is still ours inside the apply transaction, and record how the
sync ended. SQL as named constants, small functions taking a connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from handlers.db import Connection as DbConnection

# A sync claims its connection with a lease: a second sync waits until the
# first finishes or its lease runs out (its worker died). The same job may
# re-claim its own lease (a retry after a timeout). A sync requested at $4 is
# covered — nothing left to do — by a successful sync that started at or after
# $4 (it read everything the request could want).
CLAIM_SYNC = """
WITH cur AS (
    SELECT id, sync_state, sync_job_id, sync_started_at, sync_lease_until,
           sync_state = 'succeeded' AND $4::timestamptz IS NOT NULL
               AND sync_started_at >= $4::timestamptz AS covered
      FROM crm_connections WHERE id = $1 FOR UPDATE
), claimed AS (
    UPDATE crm_connections AS c
       SET sync_state = 'running', sync_job_id = $2, sync_started_at = now(),
           sync_lease_until = now() + make_interval(secs => $3), sync_error = NULL,
           updated_at = now()
      FROM cur
     WHERE c.id = cur.id AND NOT cur.covered
       AND (cur.sync_state <> 'running' OR cur.sync_job_id = $2 OR cur.sync_lease_until < now())
    RETURNING c.id
)
SELECT CASE WHEN EXISTS (SELECT 1 FROM claimed) THEN 'claimed'
            WHEN cur.covered THEN 'covered'
            ELSE 'busy' END
  FROM cur
"""
OWNS_SYNC = """
SELECT sync_job_id = $2 AND sync_state = 'running' FROM crm_connections WHERE id = $1 FOR UPDATE
"""
FINISH_SYNC = """
UPDATE crm_connections
SET sync_state = 'succeeded', sync_finished_at = now(), sync_lease_until = NULL,
    sync_error = NULL, sync_pipelines = $3, sync_statuses = $4, sync_custom_fields = $5,
    sync_removed = $6, sync_api_calls = $7, updated_at = now()
WHERE id = $1 AND sync_job_id = $2
"""
FAIL_SYNC = """
UPDATE crm_connections
SET sync_state = 'failed', sync_finished_at = now(), sync_lease_until = NULL,
    sync_error = $3, sync_api_calls = $4, updated_at = now()
WHERE id = $1 AND sync_job_id = $2
"""


@dataclass(frozen=True, slots=True)
class SyncCounts:
    pipelines: int
    statuses: int
    custom_fields: int
    removed: int
    api_calls: int


async def claim_sync(
    conn: DbConnection,
    connection_id: str,
    job_id: str,
    lease_s: float,
    requested_at: datetime | None = None,
) -> str:
    """'claimed' (this job syncs now), 'busy' (another sync runs) or 'covered' (a sync
    that started after ``requested_at`` succeeded: nothing is left to do)."""
    state = await conn.fetchval(CLAIM_SYNC, connection_id, job_id, lease_s, requested_at)
    return str(state or "busy")


async def owns_sync(conn: DbConnection, connection_id: str, job_id: str) -> bool:
    """Inside the apply transaction: lock the row and check the lease is still ours."""
    return bool(await conn.fetchval(OWNS_SYNC, connection_id, job_id))


async def finish_sync(
    conn: DbConnection, connection_id: str, job_id: str, counts: SyncCounts
) -> None:
    await conn.execute(
        FINISH_SYNC,
        connection_id,
        job_id,
        counts.pipelines,
        counts.statuses,
        counts.custom_fields,
        counts.removed,
        counts.api_calls,
    )


async def fail_sync(
    conn: DbConnection, connection_id: str, job_id: str, error: str, api_calls: int
) -> None:
    await conn.execute(FAIL_SYNC, connection_id, job_id, error, api_calls)
