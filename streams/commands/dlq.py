"""``conveyor dlq``: list, show, count, replay, resolve and purge the mirrored dead letters.

The selection (:class:`Selection`), the queries and the actions here are
shared by the command line and the console (streams/console/), which adds
its confirmation and audit around them.

Replay republishes a dead letter to the topic it first came from, with its
raw key and value and its original headers (the ones Conveyor did not add),
so the job starts over with a fresh set of attempts. A row becomes
``replayed`` only after Kafka acknowledged its record; a replay cut short
leaves the rest ``new``. Replaying a job twice is safe: the idempotency
ledger skips a job whose effects were already committed.

Purge deletes the rows mirrored longer ago than the retention
(``dlq_mirror.retention_days``, or ``--older-than``), whatever their status: a
dead letter keeps the job's raw payload and headers (webhook bodies with
their signatures, message texts), which are not kept forever
(docs/SECURITY.md, "What is kept, where, how long").

Only rows of this deployment's dead-letter topic (``kafka.dlq_topic``) are
touched. Rows that failed to decode or validate are left out unless asked
for: the same bytes fail the same way until their producer is fixed.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
from confluent_kafka import KafkaError, Message
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from handlers.db import Connection
from schemas.dlq import Stage, own_headers
from streams.commands.originals import Original, omitted, read_originals
from streams.commands.postgres import database
from streams.commands.safe import cell, clean
from streams.commands.submit import JobProducer, producer
from streams.registry import build_registry
from streams.settings import Settings
from streams.tracing import replayed

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

BATCH = 500
PURGE_BATCH = 1000
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([dhm])\s*$")
_UNIT_S = {"d": 86_400, "h": 3_600, "m": 60}
ACK_TIMEOUT_S = 60.0
INVALID_STAGES = (Stage.DECODE.value, Stage.VALIDATE.value)

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
MARK_REPLAYED = """
UPDATE worker_dlq
SET status = 'replayed', replay_count = replay_count + 1, replayed_at = now(), updated_at = now()
WHERE id = ANY($1::bigint[])
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


@dataclass(slots=True)
class ReplayReport:
    replayed: list[int] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    # A job dead-lettered twice (its worker was killed between publishing the
    # dead letter and committing): row id -> the row replayed in its place.
    duplicates: dict[int, int] = field(default_factory=dict)


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


def replay_headers(stored: str | dict[str, str]) -> list[tuple[str, str | bytes | None]]:
    """The record's own headers, as mirrored; Conveyor's (attempts, errors...) are dropped,
    and its trace context becomes a link (the replay is a new trace, streams/tracing.py)."""
    headers: dict[str, str] = json.loads(stored) if isinstance(stored, str) else stored
    return [(k, v.encode()) for k, v in replayed(own_headers(headers.items()))]


def skip_reason(
    row: asyncpg.Record | Mapping[str, Any],
    source_topics: set[str],
    include_invalid: bool,
    include_crashed: bool = False,
) -> str | None:
    """Why a row is not replayed, or None when it is."""
    if row["stage"] in INVALID_STAGES and not include_invalid:
        return f"stage {row['stage']}: the same bytes would fail again (--include-invalid)"
    if row["stage"] == Stage.CRASHED.value and not include_crashed:
        return (
            "stage crashed: it killed its worker each time it ran; replay it once the cause"
            " is fixed (--include-crashed)"
        )
    topic = row["original_topic"]
    if not topic:
        return "no original topic recorded"
    if topic not in source_topics:
        return f"{topic} is not a job topic of this configuration"
    return None


async def replay(
    settings: Settings,
    sel: Selection,
    *,
    include_invalid: bool = False,
    include_crashed: bool = False,
    dry_run: bool = False,
    prod: JobProducer | None = None,
    progress: bool = True,
) -> ReplayReport:
    """Republish the selected dead letters, batch by batch (with a progress bar on stderr)."""
    registry = build_registry(settings)
    source_topics = {spec.topic for spec in registry.specs.values()}
    dlq_topic = settings.kafka.dlq_topic
    report = ReplayReport()
    prod = prod or producer(settings)
    async with database(settings) as conn:
        total = await count(conn, dlq_topic, sel)
        remaining = total if sel.limit is None else min(total, sel.limit)
        with Progress(console=err, transient=True, disable=not progress) as bars:
            bar = bars.add_task("checking" if dry_run else "replaying", total=remaining)
            last_id = 0
            first_rows: dict[str, int] = {}
            while remaining > 0:
                rows = await fetch_rows(conn, dlq_topic, sel, last_id, min(BATCH, remaining))
                if not rows:
                    break
                remaining -= len(rows)
                last_id = rows[-1]["id"]
                todo = []
                for row in rows:
                    reason = skip_reason(row, source_topics, include_invalid, include_crashed)
                    if reason is not None:
                        report.skipped[row["id"]] = reason
                    elif (first := _first_of_job(first_rows, row)) != row["id"]:
                        report.duplicates[row["id"]] = first
                    else:
                        todo.append(row)
                if dry_run:
                    report.replayed += [r["id"] for r in todo]
                else:
                    originals = await asyncio.to_thread(_originals, settings, todo, report)
                    todo = [r for r in todo if r["id"] not in report.failed]
                    acked = await asyncio.to_thread(_publish, prod, todo, report, originals)
                    if acked:
                        await conn.execute(MARK_REPLAYED, acked)
                    report.replayed += acked
                bars.update(bar, advance=len(rows))
        if not dry_run:
            await _resolve_duplicates(conn, report)
    return report


def _first_of_job(first_rows: dict[str, int], row: asyncpg.Record) -> int:
    """The first selected row of this row's job (the row itself when it is the first)."""
    job_id = row["job_id"]
    return first_rows.setdefault(job_id, row["id"]) if job_id else int(row["id"])


async def _resolve_duplicates(conn: asyncpg.Connection, report: ReplayReport) -> None:
    """Close the duplicate rows of jobs that were replayed; the others stay ``new``."""
    replayed = set(report.replayed)
    done = [(dup, str(first)) for dup, first in report.duplicates.items() if first in replayed]
    await conn.executemany(
        "UPDATE worker_dlq SET status = 'resolved', updated_at = now(),"
        " resolution_note = 'duplicate of dead letter ' || $2::text || ' (same job), replayed'"
        " WHERE id = $1",
        done,
    )


def _originals(
    settings: Settings, rows: list[asyncpg.Record], report: ReplayReport
) -> dict[int, Original]:
    """The records that rows' dead letters left out, read back from their source topics."""
    wanted = {r["id"]: ctx for r in rows if (ctx := omitted(r["headers"])) is not None}
    found, failed = read_originals(settings, wanted)
    report.failed.update(failed)
    return found


def _publish(
    prod: JobProducer,
    rows: list[asyncpg.Record],
    report: ReplayReport,
    originals: Mapping[int, Original] | None = None,
) -> list[int]:
    """Produce one record per row; the ids Kafka acknowledged (failures go to the report).

    A row whose dead letter left out its record is published as ``originals``
    has it (read back from its source topic).
    """
    acked: list[int] = []

    def delivered(row_id: int) -> Any:
        def callback(error: KafkaError | None, _msg: Message) -> None:
            if error is None:
                acked.append(row_id)
            else:
                report.failed[row_id] = str(error)

        return callback

    for row in rows:
        original = (originals or {}).get(row["id"])
        prod.produce(
            row["original_topic"],
            value=row["raw_value"] if original is None else original.value,
            key=row["raw_key"] if original is None else original.key,
            headers=replay_headers(row["headers"])
            if original is None
            else replayed(original.headers),
            on_delivery=delivered(row["id"]),
        )
        prod.poll(0)
    left = prod.flush(ACK_TIMEOUT_S)
    if left:
        done = set(acked) | set(report.failed)
        for row in rows:
            if row["id"] not in done:
                report.failed[row["id"]] = f"not acknowledged by Kafka within {ACK_TIMEOUT_S:g} s"
    return sorted(acked)


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


def print_report(report: ReplayReport, dry_run: bool) -> None:
    verb = "would replay" if dry_run else "replayed"
    out.print(f"{verb} {len(report.replayed)} dead letter(s)")
    for row_id, first in sorted(report.duplicates.items()):
        out.print(f"  duplicate {row_id}: the same job as {first}, replayed once", markup=False)
    for row_id, reason in sorted(report.skipped.items()):
        out.print(f"  skipped {row_id}: {clean(reason)}", markup=False)
    for row_id, reason in sorted(report.failed.items()):
        err.print(
            f"  failed {row_id}: {clean(reason)} (still new; run the replay again)", markup=False
        )


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
