"""``conveyor dlq replay``: republish the selected dead letters (streams/commands/dlq.py
selects them), for the command line and the console alike.

Replay republishes a dead letter to the topic it first came from, with its
raw key and value and its original headers (the ones Conveyor did not add),
so the job starts over with a fresh set of attempts. A row becomes
``replayed`` only after Kafka acknowledged its record; a replay cut short
leaves the rest ``new``. Replaying a job twice is safe: the idempotency
ledger skips a job whose effects were already committed.

Rows that failed to decode or validate are left out unless asked for: the
same bytes fail the same way until their producer is fixed. A dead letter
that had to leave its record out (too large for its topic) is published as
its source topic still has it (streams/commands/originals.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from confluent_kafka import KafkaError, Message
from rich.console import Console
from rich.progress import Progress

from schemas.dlq import Stage, own_headers
from streams.commands.dlq import Selection, count, fetch_rows
from streams.commands.originals import Original, omitted, read_originals
from streams.commands.postgres import database
from streams.commands.safe import clean
from streams.commands.submit import JobProducer, producer
from streams.registry import build_registry
from streams.settings import Settings
from streams.tracing import replayed

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

BATCH = 500
ACK_TIMEOUT_S = 60.0
INVALID_STAGES = (Stage.DECODE.value, Stage.VALIDATE.value)

MARK_REPLAYED = """
UPDATE worker_dlq
SET status = 'replayed', replay_count = replay_count + 1, replayed_at = now(), updated_at = now()
WHERE id = ANY($1::bigint[])
"""


@dataclass(slots=True)
class ReplayReport:
    replayed: list[int] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    # A job dead-lettered twice (its worker was killed between publishing the
    # dead letter and committing): row id -> the row replayed in its place.
    duplicates: dict[int, int] = field(default_factory=dict)


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
                todo = _to_replay(
                    rows, source_topics, first_rows, report, include_invalid, include_crashed
                )
                if dry_run:
                    report.replayed += [r["id"] for r in todo]
                else:
                    await _replay_batch(conn, settings, prod, todo, report)
                bars.update(bar, advance=len(rows))
        if not dry_run:
            await _resolve_duplicates(conn, report)
    return report


def _to_replay(
    rows: list[asyncpg.Record],
    source_topics: set[str],
    first_rows: dict[str, int],
    report: ReplayReport,
    include_invalid: bool,
    include_crashed: bool,
) -> list[asyncpg.Record]:
    """The rows of a batch to republish; the others go to the report (skipped, duplicates)."""
    todo = []
    for row in rows:
        reason = skip_reason(row, source_topics, include_invalid, include_crashed)
        if reason is not None:
            report.skipped[row["id"]] = reason
        elif (first := _first_of_job(first_rows, row)) != row["id"]:
            report.duplicates[row["id"]] = first
        else:
            todo.append(row)
    return todo


async def _replay_batch(
    conn: asyncpg.Connection,
    settings: Settings,
    prod: JobProducer,
    todo: list[asyncpg.Record],
    report: ReplayReport,
) -> None:
    """Publish a batch (with the records its dead letters left out, read back); the rows
    Kafka acknowledged become ``replayed``."""
    originals = await asyncio.to_thread(_originals, settings, todo, report)
    todo = [r for r in todo if r["id"] not in report.failed]
    acked = await asyncio.to_thread(_publish, prod, todo, report, originals)
    if acked:
        await conn.execute(MARK_REPLAYED, acked)
    report.replayed += acked


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
