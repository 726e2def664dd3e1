"""The console's reads from Postgres: finding a job, CRM connections, stuck assets, failures.

Dead letters themselves are read and changed through streams/commands/dlq.py
(and replayed through dlq_replay.py), the same code ``conveyor dlq`` runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

# Every place a job is known, by job id, Kafka key, asset id or idempotency key.
FIND_DEAD_LETTERS = """
SELECT id, coalesce(last_failure_at, created_at) AS failed_at, job_type, job_id, stage,
       error_class, error_message, status, replay_count,
       payload->>'organization_id' AS organization_id
FROM worker_dlq
WHERE dlq_topic = $1 AND (
    job_id = $2
    OR payload->'payload'->>'asset_id' = $2
    OR payload->'payload'->>'idempotency_key' = $2
    OR (octet_length(raw_key) <= 512 AND raw_key = convert_to($2, 'UTF8'))
)
ORDER BY id DESC
LIMIT 50
"""
FIND_LEDGER = """
SELECT job_id, job_type, outcome, finished_at FROM processed_jobs WHERE job_id = $1
"""
FIND_ASSET = """
SELECT a.id, a.organization_id, a.filename, a.mime_type, a.status, a.error, a.chunks_count,
       a.status_job_id, a.updated_at, a.processed_at,
       (SELECT count(*) FROM asset_chunks c WHERE c.asset_id = a.id) AS chunks_stored
FROM assets AS a
WHERE a.id = $1 OR a.status_job_id = $1
LIMIT 10
"""
FIND_SENDS = """
SELECT idempotency_key, organization_id, connection_id, lead_id, channel, state, job_id,
       posts, lookups, note_id, error, sent_at, updated_at
FROM message_sends
WHERE idempotency_key = $1 OR job_id = $1
LIMIT 10
"""
FIND_WEBHOOKS = """
SELECT id, connection_id, event_id, job_id, applied, stale, received_at
FROM crm_webhook_events
WHERE job_id = $1 OR event_id = $1
LIMIT 10
"""
CONNECTIONS = """
SELECT id, organization_id, base_url, needs_reauth, reauth_reason, sync_state,
       sync_started_at, sync_finished_at, sync_error, sync_pipelines, sync_statuses,
       sync_custom_fields, access_expires_at, tokens_refreshed_at, updated_at
FROM crm_connections
ORDER BY needs_reauth DESC, organization_id, id
LIMIT 500
"""
STUCK_ASSETS = """
SELECT id, organization_id, filename, mime_type, status_job_id, updated_at,
       extract(epoch FROM now() - updated_at) AS stuck_s
FROM assets
WHERE status = 'processing' AND updated_at < now() - make_interval(secs => $1)
ORDER BY updated_at
LIMIT 200
"""
DEAD_LETTERS_SINCE = """
SELECT coalesce(job_type, '?') AS job_type, count(*) AS n
FROM worker_dlq
WHERE dlq_topic = $1 AND created_at > now() - make_interval(secs => $2)
GROUP BY 1
"""


@dataclass(slots=True)
class Found:
    """Everything known about one job id / key / asset id / idempotency key."""

    query: str
    dead_letters: list[asyncpg.Record] = field(default_factory=list)
    ledger: list[asyncpg.Record] = field(default_factory=list)
    assets: list[asyncpg.Record] = field(default_factory=list)
    sends: list[asyncpg.Record] = field(default_factory=list)
    webhooks: list[asyncpg.Record] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.dead_letters or self.ledger or self.assets or self.sends or self.webhooks)


async def find(pool: asyncpg.Pool, dlq_topic: str, query: str) -> Found:
    async with pool.acquire() as conn:
        return Found(
            query,
            list(await conn.fetch(FIND_DEAD_LETTERS, dlq_topic, query)),
            list(await conn.fetch(FIND_LEDGER, query)),
            list(await conn.fetch(FIND_ASSET, query)),
            list(await conn.fetch(FIND_SENDS, query)),
            list(await conn.fetch(FIND_WEBHOOKS, query)),
        )


async def connections(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return list(await pool.fetch(CONNECTIONS))


async def stuck_assets(pool: asyncpg.Pool, timeout_s: float) -> list[asyncpg.Record]:
    return list(await pool.fetch(STUCK_ASSETS, timeout_s))


async def dead_letters_since(pool: asyncpg.Pool, dlq_topic: str, window_s: float) -> dict[str, int]:
    """Dead letters per job type mirrored in the last ``window_s`` seconds."""
    rows = await pool.fetch(DEAD_LETTERS_SINCE, dlq_topic, window_s)
    return {r["job_type"]: r["n"] for r in rows}
