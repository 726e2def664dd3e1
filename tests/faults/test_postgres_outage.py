"""Postgres stopped for 20 s mid-load: no job dead-lettered because of it, all complete."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest

from schemas.envelope import JobEnvelope
from tests.support.dlq import dlq_rows
from tests.support.pg import PrivatePostgres
from tests.support.probe import PROBE_ENV, probe_jobs, wait_done
from tests.support.stack import Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

OUTAGE_S = 20.0


async def test_postgres_outage_mid_load(
    services: Any, private_pg: PrivatePostgres, worker_factory: Any
) -> None:
    stack = Stack(services.bootstrap, private_pg.dsn)
    stack.create_topics()
    jobs = probe_jobs(400, max_sleep_ms=60)
    doomed = [
        JobEnvelope(id=f"doomed-{i}", type="probe", payload={"fail": "permanent"}) for i in range(3)
    ]
    worker = worker_factory(stack, **PROBE_ENV, CONVEYOR_JOBS__PROBE__CONCURRENCY="8")
    worker.wait_ready()
    stack.publish(doomed + jobs)
    db = await asyncpg.create_pool(private_pg.dsn, min_size=1, max_size=2)
    try:
        await wait_done(db, jobs, 100, what="a quarter done")
    finally:
        await db.close()

    await asyncio.to_thread(private_pg.stop)
    stopped = time.monotonic()
    # Dead letters from elsewhere in the group arrive while Postgres is down.
    injected = stack.producer()
    for i in range(2):
        injected.produce(
            f"{stack.prefix}.dlq",
            b"{}",
            headers=[("conveyor-job-id", f"elsewhere-{i}".encode()), ("conveyor-stage", b"handle")],
        )
    assert injected.flush(30) == 0
    worker.wait_for(lambda e: e.get("event") == "job.waiting_for_dependency", timeout_s=30)
    await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))  # the outage itself
    await asyncio.to_thread(private_pg.start)

    db = await asyncpg.create_pool(private_pg.dsn, min_size=1, max_size=2)
    try:
        final = await wait_done(db, jobs, what="every job done after the outage")
        rows = await eventually(
            lambda: dlq_rows(db, stack),
            lambda r: len(r) >= len(doomed) + 2,
            timeout_s=60,
            what="the mirror caught up",
        )
    finally:
        await db.close()
    assert final.total == len(jobs) and final.duplicated == 0
    expected = [d.id for d in doomed] + ["elsewhere-0", "elsewhere-1"]
    assert sorted(r["job_id"] for r in rows) == sorted(expected), (
        "only the intentionally failing jobs were dead-lettered"
    )
    assert all(r["stage"] == "handle" for r in rows)
    assert worker.count("dlq.mirror_retrying") > 0, "the mirror waited for Postgres"
    assert worker.proc.poll() is None
