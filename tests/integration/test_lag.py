"""`conveyor lag`: the group's lag per topic, read without joining the group."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from streams.commands.cli import main
from streams.commands.lag import GroupLag, group_lag
from tests.support.probe import PROBE_ENV, probe_jobs, wait_done
from tests.support.stack import Stack, patched_env
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_lag_counts_unconsumed_jobs_then_drops_to_zero(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any
) -> None:
    stack.create_topics()
    jobs = probe_jobs(7, max_sleep_ms=5)
    stack.publish(jobs)
    probe_topic = stack.registry().topic_for("probe")

    def lag() -> GroupLag:
        return group_lag(stack.settings(), stack.registry())

    before = await asyncio.to_thread(lag)
    by_topic = {t.topic: t for t in before.topics}
    assert by_topic[probe_topic].lag == 7 and by_topic[probe_topic].end == 7
    assert before.total == 7 and before.members == 0

    worker = worker_factory(stack, **PROBE_ENV)
    worker.wait_ready()
    await wait_done(db, jobs)
    after = await eventually(
        lambda: asyncio.to_thread(lag), lambda g: g.total == 0, what="lag back to zero"
    )
    assert after.members == 1 and after.state == "stable"
    assert {t.topic: t for t in after.topics}[probe_topic].committed == 7

    def cli() -> int:
        with patched_env(stack.env):
            return main(["lag"])

    assert await asyncio.to_thread(cli) == 0
    assert worker.count("worker.partitions_revoked") == 0, "reading lag never joins the group"
