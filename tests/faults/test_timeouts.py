"""A job that hangs forever is timed out, retried per policy, then dead-lettered."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import pytest

from schemas.envelope import JobEnvelope
from tests.support.dlq import wait_dlq
from tests.support.probe import PROBE_ENV, effects, probe_jobs
from tests.support.stack import Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

ENV = {
    **PROBE_ENV,
    "CONVEYOR_JOBS__PROBE__TIMEOUT_S": "1.5",
    "CONVEYOR_JOBS__PROBE__MAX_ATTEMPTS": "3",
    "CONVEYOR_JOBS__PROBE__BACKOFF_BASE_S": "0.1",
    "CONVEYOR_JOBS__PROBE__CONCURRENCY": "2",
}


async def test_hanging_job_is_timed_out_retried_and_dead_lettered(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any
) -> None:
    worker = worker_factory(stack, **ENV)
    worker.wait_ready()
    hang = JobEnvelope(id="hang-1", type="probe", payload={"fail": "hang"})
    started = time.monotonic()
    stack.publish([hang])
    others = probe_jobs(40, max_sleep_ms=20)
    stack.publish(others)

    # Other jobs keep flowing while the hanging one holds a slot.
    await eventually(
        lambda: effects(db, others),
        lambda c: c.distinct == len(others),
        timeout_s=30,
        what="other jobs done meanwhile",
    )
    rows = await wait_dlq(db, stack, 1, timeout_s=60)
    elapsed = time.monotonic() - started
    row = rows[0]
    assert row["job_id"] == "hang-1"
    assert row["stage"] == "timeout"
    assert row["error_class"] == "JobTimeout"
    assert row["attempts"] == 3
    assert "timeout" in row["error_message"]
    assert elapsed < 30, "three 1.5 s attempts and short backoffs"
    timeouts = [
        e for e in worker.events if e.get("event") == "job.retrying" and e.get("job_id") == "hang-1"
    ]
    assert len(timeouts) == 2
    assert all(e.get("level") == "warning" for e in timeouts)
    dead = worker.wait_for(lambda e: e.get("event") == "job.dead_lettered", timeout_s=5)
    assert dead["level"] == "error" and dead["stage"] == "timeout"
