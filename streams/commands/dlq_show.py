"""``conveyor dlq show ID`` and ``conveyor dlq stats``: one dead letter in full, and the counts."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from streams.commands import dlq
from streams.commands.postgres import database
from streams.dlq_detail import shown
from streams.redact import Redactor
from streams.settings import Settings, secret_values

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

FIELDS = (
    "status",
    "job_type",
    "job_id",
    "organization_id",
    "stage",
    "error_class",
    "error_message",
    "attempts",
    "first_failure_at",
    "last_failure_at",
    "original_topic",
    "original_partition",
    "original_offset",
    "original_timestamp",
    "consumer_group",
    "service_version",
    "host",
    "dlq_partition",
    "dlq_offset",
    "created_at",
    "replay_count",
    "replayed_at",
    "resolution_note",
    "mirror_note",
)


async def show(settings: Settings, row_id: int, as_json: bool) -> int:
    async with database(settings) as conn:
        row, lineage = await dlq.show(conn, settings.kafka.dlq_topic, row_id)
    if row is None:
        err.print(f"no dead letter {row_id} in {settings.kafka.dlq_topic}")
        return 1
    view = shown(row, Redactor(secret_values(settings)))
    if as_json:
        fields = {name: _plain(row[name]) for name in FIELDS}
        out.print_json(
            json.dumps(
                {
                    "id": row_id,
                    **fields,
                    "key": view.key,
                    "headers": view.own_headers,
                    "failure_headers": view.conveyor_headers,
                    "payload": view.payload,
                    "stack": row["error_stack"],
                    "lineage": [r["id"] for r in lineage],
                }
            )
        )
        return 0
    out.print(f"dead letter {row_id}", style="bold")
    for name in FIELDS:
        if row[name] not in (None, ""):
            out.print(f"  {name:20} {_plain(row[name])}", markup=False)
    out.print(f"  {'key':20} {view.key}", markup=False)
    for title, headers in (("headers", view.own_headers), ("failure", view.conveyor_headers)):
        out.print(title, style="bold")
        for k, v in headers.items():
            out.print(f"  {k}: {v}", markup=False)
    out.print("payload (secrets masked)", style="bold")
    out.print(view.payload + ("\n  … (truncated)" if view.truncated else ""), markup=False)
    if row["error_stack"]:
        out.print("stack", style="bold")
        out.print(row["error_stack"], markup=False)
    if len(lineage) > 1:
        out.print("the same job's dead letters", style="bold")
        dlq.print_rows(lineage)
    return 0


async def stats(settings: Settings) -> int:
    async with database(settings) as conn:
        rows, errors = await dlq.stats(conn, settings.kafka.dlq_topic)
    if not rows:
        out.print(f"no dead letters in {settings.kafka.dlq_topic}")
        return 0
    table = Table("job type", "stage", "status", "count", "last hour", "oldest", "newest")
    for r in rows:
        table.add_row(
            r["job_type"],
            r["stage"],
            r["status"],
            str(r["n"]),
            str(r["last_hour"]),
            r["oldest"].strftime("%Y-%m-%d %H:%M"),
            r["newest"].strftime("%Y-%m-%d %H:%M"),
        )
    out.print(table)
    if errors:
        out.print("commonest error classes of new dead letters:", markup=False)
        for e in errors:
            out.print(f"  {e['n']:>8}  {e['error_class']}", markup=False)
    return 0


def _plain(value: object) -> object:
    return value.isoformat() if hasattr(value, "isoformat") else value
