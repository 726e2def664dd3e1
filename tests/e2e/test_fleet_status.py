"""Status reports: conveyor workers shows each worker, its partitions, running jobs, gone ones."""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest

from schemas.envelope import JobEnvelope
from tests.support.fleet import cli, live_reports
from tests.support.probe import PROBE_ENV
from tests.support.stack import Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e


async def test_workers_shows_running_jobs_and_a_killed_worker_as_gone(
    stack: Stack, worker_factory: Any
) -> None:
    env = {**PROBE_ENV, "CONVEYOR_JOBS__PROBE__TIMEOUT_S": "60"}
    first = worker_factory(stack, **env)
    first.wait_ready()
    slow = JobEnvelope(
        id="slow-1", type="probe", organization_id="acme", payload={"sleep_ms": 30_000}
    )
    stack.publish([slow], keys=[b"lead-7"])
    reports = await eventually(
        lambda: live_reports(stack),
        lambda rs: len(rs) == 1 and rs[0].in_flight_total == 1 and rs[0].in_flight[0].age_s > 1,
        30,
        "the slow job reported running for over a second",
    )
    (report,) = reports
    job = report.in_flight[0]
    assert (job.job_type, job.job_id, job.organization_id, job.key, job.attempt) == (
        "probe",
        "slow-1",
        "acme",
        "lead-7",
        1,
    )
    assert report.state == "running" and len(report.partitions) > 0
    probe = next(p for p in report.pools if p.job_type == "probe")
    assert (probe.in_flight, probe.concurrency) == (1, 8)
    assert report.rss_bytes and report.rss_bytes > 10 * 2**20

    table = cli(stack, "workers", "--jobs")
    assert report.host in table and "slow-1" in table and "lead-7" in table

    first.signal(signal.SIGKILL)
    first.wait_exit(30)
    listed = await eventually(
        lambda: _workers_json(stack),
        lambda ws: len(ws) == 1 and ws[0]["gone"],
        30,
        "the killed worker shown as gone after three silent intervals",
    )
    assert listed[0]["worker_id"] == report.worker_id
    assert "gone" in cli(stack, "workers")


async def _workers_json(stack: Stack) -> list[dict[str, Any]]:
    import asyncio

    out = await asyncio.to_thread(cli, stack, "workers", "--json")
    workers: list[dict[str, Any]] = json.loads(out)
    return workers
