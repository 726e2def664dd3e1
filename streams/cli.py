"""``conveyor``: run the worker and the operator commands around it."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from rich.console import Console

from streams import __version__
from streams.settings import ConfigError, Settings, load_settings, masked

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
    demo = sub.add_parser("demo", help="serve sample documents, publish asset jobs, show results")
    demo.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for results")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        err.print("conveyor: invalid configuration:")
        for line in exc.lines:
            err.print(f"  {line}", markup=False)
        return EXIT_CONFIG
    command = args.command
    if command == "config":
        out.print_json(json.dumps(masked(settings)))
        return 0
    if command == "run":
        from streams.main import run_worker

        return run_worker(settings)
    if command == "migrate":
        return asyncio.run(_migrate(settings))
    if command == "topics":
        return _topics(settings, args.topics_command)
    if command == "submit":
        from streams.submit import submit_jobs

        return submit_jobs(settings, args.job_type, args.payload, args.id, args.org, args.count)
    if command == "demo":
        from streams.demo import run_demo

        return asyncio.run(run_demo(settings, args.timeout))
    raise AssertionError(command)


async def _migrate(settings: Settings) -> int:
    from streams.migrate import MigrationError, migrate

    try:
        applied = await migrate(settings.postgres.dsn.get_secret_value())
    except (OSError, MigrationError) as exc:
        err.print(f"conveyor migrate: {exc}", markup=False)
        return 1
    out.print(
        f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else "")
    )
    return 0


def _topics(settings: Settings, action: str) -> int:
    from confluent_kafka import KafkaException

    from streams.registry import build_registry
    from streams.topics import create_topics, existing_topics

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
