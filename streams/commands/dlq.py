"""``conveyor dlq``: list, show, count, resolve and purge the mirrored dead letters.

The selection (:class:`Selection`), the queries and the actions here (and
replay, in dlq_replay.py) are shared by the command line and the console
(streams/console/), which adds its confirmation and audit around them.

Purge deletes the rows mirrored longer ago than the retention
(``dlq_mirror.retention_days``, or ``--older-than``), whatever their status: a
dead letter keeps the job's raw payload and headers (webhook bodies with
their signatures, message texts), which are not kept forever
(docs/SECURITY.md, "What is kept, where, how long").

Only rows of this deployment's dead-letter topic (``kafka.dlq_topic``) are
touched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from rich.console import Console
from rich.table import Table

from handlers.db import Connection
from streams.commands.postgres import database
from streams.commands.safe import cell
from streams.settings import Settings

out = Console(highlight=False, soft_wrap=True)

PURGE_BATCH = 1000
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([dhm])\s*$")
_UNIT_S = {"d": 86_400, "h": 3_600, "m": 60}

# A selection's conditions, each added only when its filter is set, so that every
# statement is planned for exactly its filters: one "($n IS NULL OR col = $n)" form
# would get a generic plan that uses no index (100,000 rows scanned per page).
CONDITIONS = (
    ("ids", "id = ANY(${}::bigint[])"),
    ("job_type", "job_type = ${}"),
    ("stage", "stage = ${}"),
    ("organization", "payload->>'organization_id' = ${}"),
    ("error_class", "error_class = ${}"),
    ("since", "created_at >= ${}::timestamptz"),
    ("until", "created_at < ${}::timestamptz"),
)
SUMMARY_COLUMNS = """
id, coalesce(last_failure_at, created_at) AS failed_at, original_topic, job_type, job_id,
stage, error_class, error_message, attempts, status, replay_count,
payload->>'organization_id' AS organization_id
"""
# {where} is the selection's WHERE; {p1}, {p2}: the parameters after its own.
SELECT = f"""
SELECT {SUMMARY_COLUMNS}, raw_key, raw_value, headers
FROM worker_dlq {{where}} AND id > ${{p1}}
ORDER BY id
LIMIT ${{p2}}
"""
COUNT = "SELECT count(*) FROM worker_dlq {where}"
# Newest first, a page after the keyset cursor (the console's list).
PAGE = f"""
SELECT {SUMMARY_COLUMNS}
FROM worker_dlq {{where}} AND id < ${{p1}}
ORDER BY id DESC
LIMIT ${{p2}}
"""
PURGE_SELECTED = "DELETE FROM worker_dlq {where} RETURNING id"
RESOLVE_SELECTED = """
UPDATE worker_dlq
SET status = 'resolved', resolution_note = ${p1}, updated_at = now()
{where} AND status <> 'resolved'
RETURNING id
"""
SHOW = """
SELECT *, payload->>'organization_id' AS organization_id
FROM worker_dlq
WHERE dlq_topic = $1 AND id = $2
"""
# The dead letters of the same job: earlier failures, and failures again after a replay.
LINEAGE = f"""
SELECT {SUMMARY_COLUMNS}, replayed_at, resolution_note
FROM worker_dlq
WHERE dlq_topic = $1 AND job_id = $2
ORDER BY id
LIMIT 100
"""
STATS = """
SELECT coalesce(job_type, '?') AS job_type, coalesce(stage, '?') AS stage, status,
       count(*) AS n, min(created_at) AS oldest, max(created_at) AS newest,
       count(*) FILTER (WHERE created_at > now() - interval '1 hour') AS last_hour
FROM worker_dlq
WHERE dlq_topic = $1
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""
TOP_ERRORS = """
SELECT coalesce(error_class, '?') AS error_class, count(*) AS n
FROM worker_dlq
WHERE dlq_topic = $1 AND status = 'new'
GROUP BY 1
ORDER BY 2 DESC, 1
LIMIT $2
"""
RESOLVE = """
UPDATE worker_dlq
SET status = 'resolved', resolution_note = $3, updated_at = now()
WHERE dlq_topic = $1 AND id = ANY($2::bigint[]) AND status <> 'resolved'
RETURNING id
"""


OLD = "dlq_topic = $1 AND created_at < now() - make_interval(secs => $2)"
PURGE = f"""
DELETE FROM worker_dlq WHERE id IN (SELECT id FROM worker_dlq WHERE {OLD} LIMIT $3)
RETURNING status
"""
COUNT_OLD = f"SELECT status, count(*) AS n FROM worker_dlq WHERE {OLD} GROUP BY status"


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters a command applies to."""

    ids: Sequence[int] | None = None
    job_type: str | None = None
    stage: str | None = None
    statuses: Sequence[str] = ("new",)
    limit: int | None = None
    organization: str | None = None
    error_class: str | None = None
    since: datetime | None = None  # dead-lettered at or after
    until: datetime | None = None  # dead-lettered before


def statement(template: str, dlq_topic: str, sel: Selection) -> tuple[str, list[Any]]:
    """``template`` with the selection's WHERE, and its arguments (more may follow)."""
    clauses = ["WHERE dlq_topic = $1", "AND status = ANY($2::text[])"]
    args: list[Any] = [dlq_topic, list(sel.statuses)]
    for name, condition in CONDITIONS:
        value = getattr(sel, name)
        if value is None or (name == "ids" and not value):
            continue
        args.append(list(value) if name == "ids" else value)
        clauses.append("AND " + condition.format(len(args)))
    n = len(args)
    return template.format(where="\n".join(clauses), p1=n + 1, p2=n + 2), args


async def count(conn: Connection, dlq_topic: str, sel: Selection) -> int:
    """How many dead letters ``sel`` selects (the number a confirmation states)."""
    sql, args = statement(COUNT, dlq_topic, sel)
    return int(await conn.fetchval(sql, *args))


async def page(
    conn: Connection, dlq_topic: str, sel: Selection, before_id: int | None, limit: int
) -> list[asyncpg.Record]:
    """Newest first, those with an id below ``before_id`` (keyset pagination)."""
    sql, args = statement(PAGE, dlq_topic, sel)
    return list(await conn.fetch(sql, *args, 2**62 if before_id is None else before_id, limit))


async def purge_selected(conn: Connection, dlq_topic: str, sel: Selection) -> list[int]:
    """Delete the selected dead letters from ``worker_dlq`` (the topic keeps its records)."""
    sql, args = statement(PURGE_SELECTED, dlq_topic, sel)
    return [r["id"] for r in await conn.fetch(sql, *args)]


async def resolve_selected(
    conn: Connection, dlq_topic: str, sel: Selection, note: str
) -> list[int]:
    sql, args = statement(RESOLVE_SELECTED, dlq_topic, sel)
    return [r["id"] for r in await conn.fetch(sql, *args, note)]


async def show(
    conn: Connection, dlq_topic: str, row_id: int
) -> tuple[asyncpg.Record | None, list[asyncpg.Record]]:
    """One dead letter and its lineage (every dead letter of the same job, oldest first)."""
    row = await conn.fetchrow(SHOW, dlq_topic, row_id)
    if row is None or not row["job_id"]:
        return row, []
    return row, list(await conn.fetch(LINEAGE, dlq_topic, row["job_id"]))


async def stats(
    conn: Connection, dlq_topic: str, top: int = 10
) -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
    """Counts by job type, stage and status; the commonest error classes of new ones."""
    return list(await conn.fetch(STATS, dlq_topic)), list(
        await conn.fetch(TOP_ERRORS, dlq_topic, top)
    )


async def fetch_rows(
    conn: asyncpg.Connection, dlq_topic: str, sel: Selection, after_id: int, limit: int
) -> list[asyncpg.Record]:
    sql, args = statement(SELECT, dlq_topic, sel)
    return list(await conn.fetch(sql, *args, after_id, limit))


async def list_rows(settings: Settings, sel: Selection) -> list[asyncpg.Record]:
    async with database(settings) as conn:
        return await fetch_rows(conn, settings.kafka.dlq_topic, sel, 0, sel.limit or 50)


async def resolve(settings: Settings, ids: Sequence[int], note: str) -> list[int]:
    async with database(settings) as conn:
        rows = await conn.fetch(RESOLVE, settings.kafka.dlq_topic, list(ids), note)
    return [r["id"] for r in rows]


def print_rows(rows: Sequence[asyncpg.Record | Mapping[str, Any]]) -> None:
    """The dead letters as a table; every field is data (escaped, never markup)."""
    table = Table("id", "failed at", "job type", "job id", "stage", "error", "tries", "status")
    for r in rows:
        message = f"{r['error_class'] or ''}: {r['error_message'] or ''}"
        table.add_row(
            cell(r["id"]),
            cell(r["failed_at"].strftime("%Y-%m-%d %H:%M:%S")),
            cell(r["job_type"] or ""),
            cell(r["job_id"] or ""),
            cell(r["stage"] or ""),
            cell(message if len(message) <= 80 else message[:79] + "…"),
            cell(r["attempts"] or ""),
            cell(r["status"] + (f", {r['replay_count']} replay(s)" if r["replay_count"] else "")),
        )
    out.print(table)


def age_s(text: str | None, default_days: int) -> float:
    """Seconds of ``--older-than`` (``30d``, ``12h``, ``90m``), or the retention's."""
    if text is None:
        return default_days * 86_400.0
    match = _AGE.match(text)
    if match is None or float(match[1]) <= 0:
        raise ValueError(f"--older-than {text!r}: give an age such as 30d, 12h or 90m")
    return float(match[1]) * _UNIT_S[match[2]]


async def purge(
    settings: Settings, older_than_s: float, *, dry_run: bool = False
) -> dict[str, int]:
    """Delete (or count) this deployment's dead letters mirrored over ``older_than_s`` ago,
    in batches; how many of each status."""
    topic = settings.kafka.dlq_topic
    async with database(settings) as conn:
        if dry_run:
            return {r["status"]: r["n"] for r in await conn.fetch(COUNT_OLD, topic, older_than_s)}
        counts: dict[str, int] = {}
        while rows := await conn.fetch(PURGE, topic, older_than_s, PURGE_BATCH):
            for r in rows:
                counts[r["status"]] = counts.get(r["status"], 0) + 1
    return counts
