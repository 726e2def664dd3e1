"""``crm.sync_pipelines``: a Kommo account's pipelines, statuses and custom fields, as a diff.

1. Claim the connection's sync lease (two syncs of one connection never
   interleave; a dead worker's lease runs out after ``sync_lease_s``). A
   sync requested while another runs waits for it without spending an
   attempt; one that a successful sync started after its request already
   covers is done at once (coalesced: a burst of requests makes one or two
   syncs, not one each).
2. Fetch everything first — every pipeline with its embedded statuses, and
   every page of the custom fields of leads, contacts and companies —
   writing nothing, so a failed fetch leaves the previous state whole.
3. Apply it in one transaction: upsert what exists (rows that did not change
   are not rewritten), delete what disappeared, record the outcome on the
   connection. A failure rolls all of it back.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import structlog

from handlers.crm import connections, sync_lease
from handlers.crm.services import require
from handlers.crm.sync_lease import SyncCounts
from handlers.db import Pool
from handlers.deps import Deps
from handlers.errors import Deferred, JobError, PermanentError, RetryableError
from handlers.providers.kommo import ENTITIES, KommoClient
from handlers.types import Job, Outcome
from schemas.jobs import CrmSyncPipelines

log = structlog.get_logger(__name__)

BUSY_RETRY_S = 5.0

UPSERT_PIPELINES = """
INSERT INTO crm_pipelines AS t
    (connection_id, pipeline_id, name, sort, is_main, is_unsorted_on, is_archive)
SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::int[], $5::bool[], $6::bool[], $7::bool[])
ON CONFLICT (connection_id, pipeline_id) DO UPDATE SET
    name = EXCLUDED.name, sort = EXCLUDED.sort, is_main = EXCLUDED.is_main,
    is_unsorted_on = EXCLUDED.is_unsorted_on, is_archive = EXCLUDED.is_archive, synced_at = now()
WHERE (t.name, t.sort, t.is_main, t.is_unsorted_on, t.is_archive)
    IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.sort, EXCLUDED.is_main,
                      EXCLUDED.is_unsorted_on, EXCLUDED.is_archive)
"""
DELETE_PIPELINES = """
DELETE FROM crm_pipelines WHERE connection_id = $1 AND pipeline_id <> ALL($2::bigint[])
"""
UPSERT_STATUSES = """
INSERT INTO crm_pipeline_statuses AS t
    (connection_id, pipeline_id, status_id, name, sort, color, type, is_editable)
SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::int[], $6::text[],
                         $7::smallint[], $8::bool[])
ON CONFLICT (connection_id, pipeline_id, status_id) DO UPDATE SET
    name = EXCLUDED.name, sort = EXCLUDED.sort, color = EXCLUDED.color, type = EXCLUDED.type,
    is_editable = EXCLUDED.is_editable, synced_at = now()
WHERE (t.name, t.sort, t.color, t.type, t.is_editable)
    IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.sort, EXCLUDED.color, EXCLUDED.type,
                      EXCLUDED.is_editable)
"""
DELETE_STATUSES = """
DELETE FROM crm_pipeline_statuses s
WHERE s.connection_id = $1 AND NOT EXISTS (
    SELECT 1 FROM unnest($2::bigint[], $3::bigint[]) AS k(pipeline_id, status_id)
    WHERE k.pipeline_id = s.pipeline_id AND k.status_id = s.status_id)
"""
UPSERT_FIELDS = """
INSERT INTO crm_custom_fields AS t
    (connection_id, entity_type, field_id, name, code, type, sort, is_api_only, group_id, enums)
SELECT $1, e, f, n, c, ty, so, api, g, en::jsonb
FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::int[],
            $8::bool[], $9::text[], $10::text[]) AS k(e, f, n, c, ty, so, api, g, en)
ON CONFLICT (connection_id, entity_type, field_id) DO UPDATE SET
    name = EXCLUDED.name, code = EXCLUDED.code, type = EXCLUDED.type, sort = EXCLUDED.sort,
    is_api_only = EXCLUDED.is_api_only, group_id = EXCLUDED.group_id, enums = EXCLUDED.enums,
    synced_at = now()
WHERE (t.name, t.code, t.type, t.sort, t.is_api_only, t.group_id, t.enums)
    IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.code, EXCLUDED.type, EXCLUDED.sort,
                      EXCLUDED.is_api_only, EXCLUDED.group_id, EXCLUDED.enums)
"""
DELETE_FIELDS = """
DELETE FROM crm_custom_fields f
WHERE f.connection_id = $1 AND NOT EXISTS (
    SELECT 1 FROM unnest($2::text[], $3::bigint[]) AS k(entity_type, field_id)
    WHERE k.entity_type = f.entity_type AND k.field_id = f.field_id)
"""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Columns (one list per column, in the statements' order) of what Kommo holds now."""

    pipelines: list[list[Any]]
    statuses: list[list[Any]]
    fields: list[list[Any]]

    @property
    def counts(self) -> tuple[int, int, int]:
        return len(self.pipelines[0]), len(self.statuses[0]), len(self.fields[0])


async def handle(job: Job[CrmSyncPipelines], deps: Deps) -> Outcome:
    crm = require(deps.crm)
    connection_id = job.payload.connection_id
    async with deps.db.acquire() as conn:
        connection = await connections.load(conn, connection_id)
        connections.check_organization(
            connection_id, connection.organization_id, job.organization_id
        )
        if connection.needs_reauth:
            raise PermanentError(f"CRM connection {connection_id} needs re-consent")
        claim = await sync_lease.claim_sync(
            conn, connection_id, job.id, crm.policy.sync_lease_s, job.created_at
        )
    if claim == "covered":
        log.info("crm.sync_coalesced", connection_id=connection_id)
        return Outcome.SKIPPED
    if claim == "busy":
        raise Deferred(
            f"another sync of {connection_id} is running; this one waits for it",
            delay_s=BUSY_RETRY_S,
        )
    client = crm.client(deps.db, connection)
    try:
        snapshot = await fetch(client)
        counts = await apply(deps.db, connection_id, job.id, snapshot, client.calls)
    except Exception as exc:  # recorded, and the lease released for the next sync
        await _record_failure(deps.db, connection_id, job.id, exc, client.calls)
        raise
    log.info(
        "crm.synced",
        connection_id=connection_id,
        pipelines=counts.pipelines,
        statuses=counts.statuses,
        custom_fields=counts.custom_fields,
        removed=counts.removed,
        api_calls=counts.api_calls,
    )
    return Outcome.SUCCEEDED


async def fetch(client: KommoClient) -> Snapshot:
    """Everything the sync stores, read before anything is written."""
    pipelines, *fields = await asyncio.gather(
        client.pipelines(), *(client.custom_fields(entity) for entity in ENTITIES)
    )
    try:
        return Snapshot(
            _columns([_pipeline(p) for p in pipelines], 6),
            _columns([_status(p, s) for p in pipelines for s in _statuses(p)], 7),
            _columns(
                [_field(e, f) for e, found in zip(ENTITIES, fields, strict=True) for f in found], 9
            ),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RetryableError(f"Kommo answered an unusable pipeline or field ({exc!r})") from None


async def apply(
    db: Pool, connection_id: str, job_id: str, snapshot: Snapshot, api_calls: int
) -> SyncCounts:
    """Make the stored state equal to ``snapshot`` in one transaction, and record it."""
    async with db.acquire() as conn, conn.transaction():
        if not await sync_lease.owns_sync(conn, connection_id, job_id):
            raise RetryableError(
                f"the sync lease of {connection_id} was lost", delay_s=BUSY_RETRY_S
            )
        p, s, f = snapshot.pipelines, snapshot.statuses, snapshot.fields
        removed = _deleted(await conn.execute(DELETE_STATUSES, connection_id, s[0], s[1]))
        removed += _deleted(await conn.execute(DELETE_PIPELINES, connection_id, p[0]))
        removed += _deleted(await conn.execute(DELETE_FIELDS, connection_id, f[0], f[1]))
        await conn.execute(UPSERT_PIPELINES, connection_id, *p)
        await conn.execute(UPSERT_STATUSES, connection_id, *s)
        await conn.execute(UPSERT_FIELDS, connection_id, *f)
        counts = SyncCounts(*snapshot.counts, removed=removed, api_calls=api_calls)
        await sync_lease.finish_sync(conn, connection_id, job_id, counts)
    return counts


async def _record_failure(
    db: Pool, connection_id: str, job_id: str, exc: Exception, api_calls: int
) -> None:
    reason = str(exc) if isinstance(exc, JobError) else f"{type(exc).__name__}: {exc}"
    try:
        async with db.acquire() as conn:
            await sync_lease.fail_sync(conn, connection_id, job_id, reason, api_calls)
    except Exception as failed:  # the job's own error matters more
        log.warning("crm.sync_status_unrecorded", connection_id=connection_id, error=repr(failed))


def _statuses(pipeline: dict[str, Any]) -> list[dict[str, Any]]:
    return list((pipeline.get("_embedded") or {}).get("statuses") or [])


def _pipeline(p: dict[str, Any]) -> tuple[Any, ...]:
    return (
        int(p["id"]),
        str(p["name"]),
        int(p.get("sort") or 0),
        bool(p.get("is_main")),
        bool(p.get("is_unsorted_on")),
        bool(p.get("is_archive")),
    )


def _status(pipeline: dict[str, Any], s: dict[str, Any]) -> tuple[Any, ...]:
    return (
        int(pipeline["id"]),
        int(s["id"]),
        str(s["name"]),
        int(s.get("sort") or 0),
        s.get("color"),
        int(s.get("type") or 0),
        bool(s.get("is_editable")),
    )


def _field(entity: str, f: dict[str, Any]) -> tuple[Any, ...]:
    enums = f.get("enums")
    return (
        entity,
        int(f["id"]),
        str(f["name"]),
        f.get("code"),
        str(f.get("type") or ""),
        int(f.get("sort") or 0),
        bool(f.get("is_api_only")),
        None if f.get("group_id") is None else str(f["group_id"]),
        None if enums is None else json.dumps(enums, sort_keys=True),
    )


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


def _deleted(status: str) -> int:
    """Rows deleted, from asyncpg's command status ``DELETE n``."""
    return int(status.rsplit(" ", 1)[-1])
