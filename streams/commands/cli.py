"""``conveyor``: run the worker and the operator commands around it."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console

from schemas.dlq import Stage
from streams import __version__
from streams.commands.safe import clean
from streams.settings import ConfigError, Settings, forget_environment, load_settings, masked

EXIT_CONFIG = 2
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="conveyor",
        description="Kafka worker for document ingestion, CRM sync and messaging jobs. "
        "Configuration comes from CONVEYOR_* environment variables (see `conveyor config`).",
    )
    p.add_argument("--version", action="version", version=f"conveyor {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="run the worker in the foreground (SIGTERM drains and exits 0)")
    sub.add_parser("config", help="print the effective configuration (secrets masked)")
    sub.add_parser("migrate", help="apply pending SQL migrations (idempotent, advisory-locked)")
    topics = sub.add_parser("topics", help="manage the catalog's Kafka topics")
    tsub = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    tsub.add_parser("create", help="create every missing topic (source, retry, dead-letter)")
    tsub.add_parser("list", help="list the catalog's topics and whether they exist")
    submit = sub.add_parser(
        "submit", help='publish a job, e.g. submit asset.process \'{"asset_id": "a1"}\''
    )
    submit.add_argument("job_type")
    submit.add_argument("payload", help="the payload as JSON")
    submit.add_argument("--id", help="job id (default: a new UUID)")
    submit.add_argument("--org", help="organization id")
    submit.add_argument("--count", type=int, default=1, help="publish this many copies")
    submit.add_argument(
        "--key",
        help="the records' Kafka key, e.g. the lead or connection whose jobs keep their order"
        " (default: the payload's canonical JSON)",
    )
    sub.add_parser("lag", help="the consumer group's lag per topic, its state and members")
    from streams.commands.fleet import add_parsers

    add_parsers(sub)
    _dlq_parser(sub)
    _crm_parser(sub)
    sub.add_parser(
        "console",
        help="the operations console: fleet, dead letters, find a job, CRM, pause/resume"
        " (on console.host:console.port, loopback by default)",
    )
    demo = sub.add_parser("demo", help="serve sample documents, publish asset jobs, show results")
    demo.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for results")
    return p


def _dlq_parser(sub: Any) -> None:
    dlq = sub.add_parser(
        "dlq", help="list, show, count, replay and resolve dead letters (worker_dlq)"
    )
    dsub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")

    def filters(p: argparse.ArgumentParser) -> None:
        p.add_argument("--id", type=int, action="append", dest="ids", help="a worker_dlq id")
        p.add_argument("--job-type", help="only dead letters of this job type")
        p.add_argument("--stage", choices=[s.value for s in Stage], help="only this stage")
        p.add_argument("--org", help="only this organization's (the envelope's organization_id)")
        p.add_argument("--error-class", help="only this error class, e.g. PermanentError")

    ls = dsub.add_parser("list", help="show dead letters, oldest first")
    filters(ls)
    ls.add_argument(
        "--status",
        choices=["new", "replayed", "resolved", "all"],
        default="new",
        help="default: new",
    )
    ls.add_argument("--limit", type=int, default=50, help="at most this many rows (default 50)")
    sh = dsub.add_parser(
        "show", help="one dead letter: payload (secrets masked), headers, stack, lineage"
    )
    sh.add_argument("id", type=int, metavar="ID")
    sh.add_argument("--json", action="store_true", help="as JSON")
    dsub.add_parser("stats", help="counts by job type, stage and status; commonest errors")
    rp = dsub.add_parser(
        "replay",
        help="republish dead letters to their original topics (fresh attempts)",
        description="Republish the selected dead letters (status new) to the topics they "
        "came from, then mark them replayed. Select with --id, --job-type or --stage, or "
        "--all. Decode and validate failures are left out unless --include-invalid, jobs that "
        "killed their worker (stage crashed) unless --include-crashed.",
    )
    filters(rp)
    rp.add_argument("--all", action="store_true", help="every new dead letter")
    rp.add_argument("--include-replayed", action="store_true", help="replay them again")
    rp.add_argument("--include-invalid", action="store_true", help="decode/validate failures too")
    rp.add_argument(
        "--include-crashed",
        action="store_true",
        help="jobs that killed their worker too (once the cause is fixed)",
    )
    rp.add_argument("--limit", type=int, help="at most this many dead letters")
    rp.add_argument("--dry-run", action="store_true", help="show what would be replayed")
    rs = dsub.add_parser("resolve", help="close dead letters that need no replay, with a note")
    rs.add_argument("ids", type=int, nargs="+", metavar="ID")
    rs.add_argument("--note", required=True, help="why (stored in resolution_note)")
    pg = dsub.add_parser(
        "purge",
        help="delete dead letters mirrored longer ago than the retention (any status)",
    )
    pg.add_argument(
        "--older-than",
        metavar="AGE",
        help="e.g. 30d, 12h, 90m (default: dlq_mirror.retention_days)",
    )
    pg.add_argument("--dry-run", action="store_true", help="count, delete nothing")


def _crm_parser(sub: Any) -> None:
    crm = sub.add_parser("crm", help="Kommo connections: connect, list, rotate-key, sync")
    csub = crm.add_subparsers(dest="crm_command", required=True, metavar="ACTION")
    c = csub.add_parser(
        "connect",
        allow_abbrev=False,  # no --secrets standing for --secrets-from
        help="register (or re-register) a connection after the platform's OAuth consent",
        description="Register a Kommo connection. The secrets are read from the environment "
        "(KOMMO_CLIENT_SECRET, KOMMO_ACCESS_TOKEN, KOMMO_REFRESH_TOKEN, KOMMO_WEBHOOK_SECRET) "
        "or, with --secrets-from stdin, from NAME=value lines on stdin; never from arguments.",
    )
    c.add_argument("connection_id", metavar="CONNECTION_ID")
    c.add_argument("--org", required=True, help="the organization the connection belongs to")
    c.add_argument("--base-url", required=True, help="the account: https://<subdomain>.kommo.com")
    c.add_argument("--client-id", required=True, help="the integration's OAuth client id")
    c.add_argument("--redirect-uri", required=True, help="the integration's OAuth redirect URI")
    c.add_argument(
        "--account-subdomain",
        help="the account its webhook deliveries name (default: from --base-url)",
    )
    when = c.add_mutually_exclusive_group(required=True)
    when.add_argument("--expires-in", type=float, help="access token lifetime, seconds from now")
    when.add_argument("--expires-at", help="access token expiry, ISO 8601 with a time zone")
    c.add_argument("--secrets-from", default="env", metavar="env|stdin", help="default: env")
    ls = csub.add_parser("list", help="connections, their state and last sync (no secrets)")
    ls.add_argument("--org", help="only this organization's")
    ls.add_argument("--json", action="store_true", help="as JSON")
    csub.add_parser(
        "rotate-key",
        help="re-encrypt every secret under the keyring's first key (idempotent, online)",
    )
    s = csub.add_parser("sync", help="publish a crm.sync_pipelines job for one connection")
    s.add_argument("connection_id", metavar="CONNECTION_ID")
    s.add_argument("--wait", type=float, metavar="SECONDS", help="wait for its outcome")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["crm"]:
        from streams.commands.crm import refuse_secrets_in_argv

        refused = refuse_secrets_in_argv(argv)
        if refused:
            err.print(f"conveyor crm: {refused}", markup=False)
            return EXIT_CONFIG
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "crm":  # not echoed: a stray argument may be a secret
        err.print(f"conveyor crm: {len(extra)} unexpected argument(s) (not shown)")
        return EXIT_CONFIG
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        settings = load_settings()
    except ConfigError as exc:
        err.print("conveyor: invalid configuration:")
        for line in exc.lines:
            err.print(f"  {line}", markup=False)
        return EXIT_CONFIG
    command = args.command
    if _uses_kafka(args) and (problem := _kafka_problem(settings)):
        err.print(f"conveyor {command}: {problem}", markup=False)
        return 1
    if command == "config":
        out.print_json(json.dumps(masked(settings)))
        return 0
    if command == "run":
        from streams.commands.run import run_worker

        forget_environment()  # no child process inherits a secret (docs/SECURITY.md)
        return run_worker(settings)
    if command == "migrate":
        return asyncio.run(_migrate(settings))
    if command == "topics":
        return _topics(settings, args.topics_command)
    if command == "submit":
        from streams.commands.submit import submit_jobs

        return submit_jobs(
            settings, args.job_type, args.payload, args.id, args.org, args.count, args.key
        )
    if command == "lag":
        return _lag(settings)
    if command in ("pause", "resume", "paused", "workers"):
        from streams.commands.fleet import run_fleet

        return run_fleet(settings, args)
    if command == "dlq":
        return asyncio.run(_dlq(settings, args))
    if command == "crm":
        from streams.commands.crm import run_crm

        return run_crm(settings, args)
    if command == "console":
        from streams.commands.console import run_console

        forget_environment()
        return run_console(settings)
    if command == "demo":
        from streams.commands.demo import run_demo

        return asyncio.run(run_demo(settings, args.timeout))
    raise AssertionError(command)


def _uses_kafka(args: argparse.Namespace) -> bool:
    return args.command in (
        "topics",
        "lag",
        "submit",
        "demo",
        "pause",
        "resume",
        "paused",
        "workers",
        "console",
    ) or (args.command == "dlq" and args.dlq_command == "replay")


def _kafka_problem(settings: Settings) -> str | None:
    """One line when Kafka refuses us (login, TLS) or does not answer; see kafka_config."""
    from streams.kafka_config import connection_problem

    return connection_problem(settings.kafka)


async def _migrate(settings: Settings) -> int:
    from streams.commands.migrate import MigrationError, migrate

    try:
        applied = await migrate(settings.postgres.dsn.get_secret_value())
    except (OSError, MigrationError) as exc:
        err.print(f"conveyor migrate: {exc}", markup=False)
        return 1
    out.print(
        f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else "")
    )
    return 0


async def _purge(settings: Settings, args: argparse.Namespace) -> int:
    from streams.commands import dlq

    try:
        age_s = dlq.age_s(args.older_than, settings.dlq_mirror.retention_days)
    except ValueError as exc:
        err.print(f"conveyor dlq purge: {exc}", markup=False)
        return EXIT_CONFIG
    counts = await dlq.purge(settings, age_s, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    per_status = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none"
    out.print(f"{verb} dead letters mirrored over {age_s / 86400:g} day(s) ago: {per_status}")
    return 0


async def _dlq(settings: Settings, args: argparse.Namespace) -> int:
    import asyncpg

    from streams.commands import dlq, dlq_replay

    action = args.dlq_command
    try:
        if action == "purge":
            return await _purge(settings, args)
        if action in ("show", "stats"):
            from streams.commands import dlq_show

            if action == "show":
                return await dlq_show.show(settings, args.id, args.json)
            return await dlq_show.stats(settings)
        if action == "resolve":
            done = await dlq.resolve(settings, args.ids, args.note)
            missing = sorted(set(args.ids) - set(done))
            out.print(f"resolved {len(done)} dead letter(s)")
            if missing:
                err.print(f"not found or already resolved: {', '.join(map(str, missing))}")
            return 1 if missing else 0
        statuses = _statuses(args)
        sel = dlq.Selection(
            args.ids,
            args.job_type,
            args.stage,
            statuses,
            args.limit,
            organization=args.org,
            error_class=args.error_class,
        )
        if action == "list":
            dlq.print_rows(await dlq.list_rows(settings, sel))
            return 0
        chosen = (args.ids, args.job_type, args.stage, args.org, args.error_class, args.all)
        if not any(chosen):
            err.print(
                "conveyor dlq replay: select with --id, --job-type, --stage, --org or"
                " --error-class, or --all"
            )
            return EXIT_CONFIG
        report = await dlq_replay.replay(
            settings,
            sel,
            include_invalid=args.include_invalid,
            include_crashed=args.include_crashed,
            dry_run=args.dry_run,
        )
    except (OSError, asyncpg.PostgresError) as exc:
        err.print(f"conveyor dlq: Postgres: {clean(exc)}", markup=False)
        return 1
    dlq_replay.print_report(report, args.dry_run)
    return 1 if report.failed else 0


def _statuses(args: argparse.Namespace) -> tuple[str, ...]:
    if args.dlq_command == "list":
        return ("new", "replayed", "resolved") if args.status == "all" else (args.status,)
    return ("new", "replayed") if args.include_replayed else ("new",)


def _lag(settings: Settings) -> int:
    from confluent_kafka import KafkaException
    from rich.table import Table

    from streams.commands.lag import group_lag
    from streams.registry import build_registry

    try:
        lag = group_lag(settings, build_registry(settings))
    except KafkaException as exc:
        err.print(f"conveyor lag: Kafka at {settings.kafka.bootstrap_servers}: {exc}", markup=False)
        return 1
    table = Table("topic", "partitions", "committed", "written", "lag")
    for t in lag.topics:
        table.add_row(t.topic, str(t.partitions), str(t.committed), str(t.end), str(t.lag))
    out.print(table)
    out.print(
        f"group {lag.group_id}: {lag.state}, {lag.members} member(s); total lag {lag.total}",
        markup=False,
    )
    return 0


def _topics(settings: Settings, action: str) -> int:
    from confluent_kafka import KafkaException

    from streams.commands.topics import create_topics, existing_topics
    from streams.registry import build_registry

    registry = build_registry(settings)
    try:
        if action == "create":
            for r in create_topics(settings, registry):
                out.print(f"{'created' if r.created else 'exists '}  {r.name}")
        else:
            have = existing_topics(settings)
            for name in registry.all_topics():
                out.print(f"{'ok     ' if name in have else 'missing'}  {name}")
    except KafkaException as exc:
        err.print(
            f"conveyor topics: Kafka at {settings.kafka.bootstrap_servers}: {exc}", markup=False
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
