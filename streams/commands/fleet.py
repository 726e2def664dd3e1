"""``conveyor pause | resume | paused | workers``: runtime control and the fleet from a terminal."""

from __future__ import annotations

import argparse
import getpass
import json
import socket
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table

from schemas.fleet import PauseRecord
from streams.fleet import WorkerView, fleet_snapshot, pauses_snapshot, set_pause
from streams.follow import FollowError
from streams.registry import build_registry
from streams.settings import Settings

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def cli_actor() -> str:
    """Who paused, as the control record says: the local user and host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()} (cli)"


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "pause",
        help="stop every worker starting jobs of a type (or of one organization); running"
        " ones finish",
    )
    p.add_argument("job_type")
    p.add_argument("--reason", required=True, help="why (shown by `conveyor paused`)")
    p.add_argument("--org", help="only this organization's jobs of the type")
    r = sub.add_parser("resume", help="start jobs of a paused type (or organization) again")
    r.add_argument("job_type")
    r.add_argument("--org", help="the organization paused with --org")
    ls = sub.add_parser("paused", help="the pauses in force: who, why, since when")
    ls.add_argument("--json", action="store_true", help="as JSON")
    w = sub.add_parser("workers", help="each worker's latest status report (gone ones marked)")
    w.add_argument("--jobs", action="store_true", help="also list each worker's running jobs")
    w.add_argument("--json", action="store_true", help="the reports as JSON")


def run_fleet(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    command = args.command
    try:
        if command in ("pause", "resume"):
            return asyncio.run(_pause(settings, args, paused=command == "pause"))
        if command == "paused":
            return asyncio.run(_paused(settings, args.json))
        return asyncio.run(_workers(settings, args.jobs, args.json))
    except FollowError as exc:
        err.print(f"conveyor {command}: {exc}", markup=False)
        return 1


async def _pause(settings: Settings, args: argparse.Namespace, *, paused: bool) -> int:
    registry = build_registry(settings)
    if args.job_type not in registry.specs:
        err.print(f"unknown job type {args.job_type!r}; known: {', '.join(registry.specs)}")
        return 2
    scope = f"{args.job_type}" + (f" of organization {args.org}" if args.org else "")
    if not paused:
        now = await pauses_snapshot(settings)
        current = now.of(args.job_type)
        was = current is not None and (
            current.whole is not None if args.org is None else args.org in current.orgs
        )
        if not was:
            out.print(f"{scope} is not paused", markup=False)
            return 0
    record = PauseRecord(
        job_type=args.job_type,
        organization_id=args.org,
        paused=paused,
        reason=args.reason if paused else "",
        by=cli_actor(),
    )
    await set_pause(settings, record)
    out.print(f"{'paused' if paused else 'resumed'} {scope}", markup=False)
    return 0


async def _paused(settings: Settings, as_json: bool) -> int:
    pauses = (await pauses_snapshot(settings)).current()
    if as_json:
        out.print_json(json.dumps([p.model_dump(mode="json") for p in pauses]))
        return 0
    if not pauses:
        out.print("nothing is paused")
        return 0
    table = Table("job type", "organization", "since", "by", "reason")
    for p in pauses:
        table.add_row(p.job_type, p.organization_id or "(every one)", _when(p.at), p.by, p.reason)
    out.print(table)
    return 0


async def _workers(settings: Settings, jobs: bool, as_json: bool) -> int:
    views = (await fleet_snapshot(settings)).workers()
    if as_json:
        payload = [{**v.report.model_dump(mode="json"), "gone": v.gone} for v in views]
        out.print_json(json.dumps(payload))
        return 0
    if not views:
        out.print("no worker has reported")
        return 0
    table = Table(
        "worker", "state", "partitions", "running", "busiest pool", "rss", "loop p99", "last seen"
    )
    for v in views:
        r = v.report
        table.add_row(
            f"{r.host} pid {r.pid}",
            "gone" if v.gone and r.state != "stopped" else r.state,
            str(len(r.partitions)),
            str(r.in_flight_total),
            _busiest(v),
            _mib(r.rss_bytes),
            "" if r.loop_lag_ms is None else f"{r.loop_lag_ms:g} ms",
            f"{v.silent_s:.0f} s ago",
        )
    out.print(table)
    paused = sorted({label for v in views if not v.gone for label in v.report.paused})
    if paused:
        out.print(f"paused: {', '.join(paused)}", markup=False)
    if jobs:
        _print_jobs(views)
    return 0


def _print_jobs(views: list[WorkerView]) -> None:
    table = Table("worker", "job type", "job id", "organization", "key", "attempt", "age")
    for v in views:
        if v.gone:
            continue
        for j in v.report.in_flight:
            table.add_row(
                f"{v.report.host} pid {v.report.pid}",
                j.job_type,
                j.job_id or "",
                j.organization_id or "",
                j.key or "",
                str(j.attempt),
                f"{j.age_s:.1f} s",
            )
    out.print(table)


def _busiest(view: WorkerView) -> str:
    pools = [p for p in view.report.pools if p.concurrency]
    if not pools:
        return ""
    top = max(pools, key=lambda p: p.utilisation)
    return f"{top.job_type} {top.in_flight}/{top.concurrency}"


def _mib(value: int | None) -> str:
    return "" if value is None else f"{value / 2**20:.0f} MiB"


def _when(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
