"""The dead-letter mirror under a second fault: hostile input, and a database that turns read-only.

- A value nested 5,000 levels deep (``[[[[…]]]]``, 10 KB) published to a job
  topic is dead-lettered at ``decode``; the mirror stores it (raw bytes, a
  note) and the dead letters behind it. Before, the mirror's JSON reader
  raised ``RecursionError``, which it did not count as the record's fault:
  it retried that record forever and mirrored nothing after it.
- Postgres answers read-only (SQLSTATE 25006, as a standby does during a
  failover) for a while: the mirror waits and then stores every dead letter,
  and jobs wait instead of spending their attempts. Before, the mirror took
  25006 for a refused record and skipped the dead letters (offsets
  committed, never in ``worker_dlq``), and jobs were dead-lettered.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from schemas.envelope import JobEnvelope
from tests.support.dlq import dlq_rows, wait_dlq
from tests.support.pg import PrivatePostgres
from tests.support.probe import PROBE_ENV, probe_jobs, wait_done
from tests.support.stack import Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

NESTED = b"[" * 5000 + b"]" * 5000


async def test_deeply_nested_json_is_dead_lettered_and_mirrored_without_wedging_the_mirror(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any
) -> None:
    worker = worker_factory(stack, **PROBE_ENV)
    worker.wait_ready()
    producer = stack.producer()
    probe_topic = stack.registry().topic_for("probe")
    producer.produce(probe_topic, NESTED, b"deep", partition=0)
    doomed = JobEnvelope(id="after-the-deep-one", type="probe", payload={"fail": "permanent"})
    producer.produce(probe_topic, doomed.to_bytes(), b"next", partition=0)
    assert producer.flush(30) == 0

    rows = await wait_dlq(db, stack, 2, timeout_s=60)
    deep = next(r for r in rows if bytes(r["raw_value"]) == NESTED)
    assert deep["stage"] == "decode"
    assert deep["payload"] is None and "nested too deeply" in deep["mirror_note"]
    after = next(r for r in rows if r["job_id"] == doomed.id)
    assert after["stage"] == "handle", "the dead letter behind it was mirrored too"
    assert worker.count("dlq.mirror_retrying") == 0
    assert worker.proc.poll() is None


async def read_only(pg: PrivatePostgres, on: bool) -> None:
    """The whole server turns read-only (or back), as a standby in a failover answers."""
    admin = await asyncpg.connect(pg.dsn.replace("conveyor:conveyor@", "postgres@"))
    try:
        await admin.execute(
            "ALTER SYSTEM SET default_transaction_read_only = " + ("on" if on else "off")
        )
        await admin.execute("SELECT pg_reload_conf()")
    finally:
        await admin.close()


async def test_a_read_only_database_makes_the_mirror_and_jobs_wait_not_skip_or_fail(
    services: Any, private_pg: PrivatePostgres, worker_factory: Any
) -> None:
    stack = Stack(services.bootstrap, private_pg.dsn)
    stack.create_topics()
    jobs = probe_jobs(200, max_sleep_ms=30)
    doomed = [
        JobEnvelope(id=f"doomed-{i}", type="probe", payload={"fail": "permanent"}) for i in range(3)
    ]
    worker = worker_factory(
        stack,
        **PROBE_ENV,
        CONVEYOR_JOBS__PROBE__CONCURRENCY="4",
        CONVEYOR_JOBS__PROBE__MAX_ATTEMPTS="2",  # an attempt spent on 25006 would show at once
        CONVEYOR_DLQ_MIRROR__BACKOFF_MAX_S="1",
    )
    worker.wait_ready()
    db = await asyncpg.create_pool(private_pg.dsn, min_size=1, max_size=2)
    try:
        stack.publish(jobs[:50])
        await wait_done(db, jobs[:50], what="the first jobs done")

        await read_only(private_pg, True)
        stack.publish(jobs[50:] + doomed)
        injected = stack.producer()
        for i in range(2):
            injected.produce(
                f"{stack.prefix}.dlq",
                b"{}",
                headers=[("conveyor-job-id", f"elsewhere-{i}".encode())],
            )
        assert injected.flush(30) == 0
        worker.wait_for(lambda e: e.get("event") == "dlq.mirror_retrying", timeout_s=60)
        worker.wait_for(lambda e: e.get("event") == "job.waiting_for_dependency", timeout_s=60)
        await read_only(private_pg, False)

        final = await wait_done(db, jobs, what="every job done once writable again")
        expected = sorted([d.id for d in doomed] + ["elsewhere-0", "elsewhere-1"])
        rows = await eventually(
            lambda: dlq_rows(db, stack),
            lambda r: len(r) >= len(expected),
            timeout_s=60,
            what="every dead letter mirrored",
        )
    finally:
        await db.close()
    assert final.total == len(jobs) and final.duplicated == 0
    assert sorted(r["job_id"] for r in rows) == expected, (
        "no job dead-lettered for the read-only spell, no dead letter skipped"
    )
    assert all(r["mirror_note"] is None for r in rows), "stored whole, not degraded"
    assert worker.count("dlq.mirror_skipped") == 0
    assert worker.count("dlq.mirror_refused") == 0
    assert worker.proc.poll() is None
