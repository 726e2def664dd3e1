"""The fleet topics from a test: workers' reports, held records, pauses via the CLI."""

from __future__ import annotations

from schemas.fleet import StatusReport
from streams.fleet import fleet_snapshot
from tests.support.cli import conveyor
from tests.support.stack import Stack


async def live_reports(stack: Stack) -> list[StatusReport]:
    """The latest report of each worker that is not gone."""
    view = await fleet_snapshot(stack.settings())
    return [v.report for v in view.workers() if not v.gone]


async def held(stack: Stack, job_type: str = "probe") -> int:
    """Records of ``job_type`` the live workers hold (paused), as their last reports say."""
    return sum(p.held for r in await live_reports(stack) for p in r.pools if p.job_type == job_type)


def cli(stack: Stack, *args: str) -> str:
    done = conveyor(*args, env=stack.env)
    assert done.returncode == 0, f"conveyor {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout
