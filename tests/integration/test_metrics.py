"""The worker's /metrics, /healthz and /readyz, scraped over loopback while it runs jobs."""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from schemas.envelope import JobEnvelope
from tests.support.dlq import wait_dlq
from tests.support.metrics_port import metrics_env
from tests.support.probe import PROBE_ENV, effects, probe_jobs
from tests.support.stack import Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


SUCCEEDED = ("conveyor_jobs_total", (("job_type", "probe"), ("outcome", "succeeded")))
DEAD_LETTERED = ("conveyor_jobs_total", (("job_type", "probe"), ("outcome", "dead_lettered")))


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_count_job_endings_and_health_answers(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any
) -> None:
    port, serve = metrics_env()
    worker = worker_factory(
        stack,
        **PROBE_ENV,
        **serve,
        CONVEYOR_JOBS__PROBE__MAX_ATTEMPTS="2",
        CONVEYOR_JOBS__PROBE__BACKOFF_BASE_S="0.05",
    )
    worker.wait_ready()
    base = f"http://127.0.0.1:{port}"
    ok = probe_jobs(20, max_sleep_ms=5)
    bad = JobEnvelope(type="probe", payload={"fail": "permanent"})
    flaky = JobEnvelope(type="probe", payload={"fail": "retryable", "fail_times": 1})
    stack.publish([*ok, bad, flaky])
    await eventually(lambda: effects(db, [*ok, flaky]), lambda c: c.distinct == 21, what="jobs")
    await wait_dlq(db, stack, 1)

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as r:
            assert r.status == 200
        async with http.get(f"{base}/readyz") as r:
            assert r.status == 200

        async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            async with http.get(f"{base}/metrics") as r:
                assert r.status == 200
                return samples(await r.text())

        # Counters move just after a job's effects commit: wait for the last ones.
        got = await eventually(
            scrape,
            lambda m: m.get(SUCCEEDED) == 21 and m.get(DEAD_LETTERED) == 1,
            what="every ending counted",
        )

    def value(name: str, **labels: str) -> float:
        return got.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("conveyor_jobs_total", job_type="probe", outcome="succeeded") == 21
    assert value("conveyor_jobs_total", job_type="probe", outcome="dead_lettered") == 1
    assert value("conveyor_dead_letters_total", job_type="probe", stage="handle") == 1
    assert value("conveyor_job_retries_total", job_type="probe", where="in_place") == 1
    assert value("conveyor_job_attempt_seconds_count", job_type="probe") == 21
    assert value("conveyor_jobs_in_flight", job_type="probe") == 0
    assert value("conveyor_ready") == 1
    assert value("process_resident_memory_bytes") > 0
