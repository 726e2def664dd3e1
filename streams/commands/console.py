"""``conveyor console``: start the operations console (streams/console/) in the foreground."""

from __future__ import annotations

import asyncio

import structlog
from rich.console import Console

from streams import logs
from streams.commands.postgres import missing_table
from streams.console.app import serve
from streams.console.auth import Authenticator
from streams.follow import FollowError
from streams.settings import Settings, secret_values

err = Console(stderr=True, highlight=False, soft_wrap=True)
log = structlog.get_logger(__name__)

EXIT_CONFIG = 2


def run_console(settings: Settings) -> int:
    c = settings.console
    problems = c.problems()
    if problems:
        err.print("conveyor console: invalid configuration (docs/CONSOLE.md):")
        for line in problems:
            err.print(f"  {line}", markup=False)
        return EXIT_CONFIG
    tokens = Authenticator(c).secrets()
    logs.configure(settings.logging, [*secret_values(settings), *tokens])
    problem = asyncio.run(_check_postgres(settings))
    if problem:
        err.print(f"conveyor console: {problem}", markup=False)
        return 1
    try:
        asyncio.run(serve(settings))
    except FollowError as exc:
        err.print(f"conveyor console: {exc}; run `conveyor topics create`", markup=False)
        return 1
    except OSError as exc:
        err.print(f"conveyor console: cannot listen on {c.host}:{c.port}: {exc}", markup=False)
        return 1
    return 0


async def _check_postgres(settings: Settings) -> str | None:
    return await missing_table(settings, "console_audit")
