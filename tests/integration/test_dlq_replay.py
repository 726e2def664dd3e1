"""`conveyor dlq`: a dead letter replayed after its cause is fixed runs once, afresh."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from schemas.envelope import JobEnvelope
from streams.commands import dlq, dlq_replay
from streams.commands.cli import main
from tests.support.dlq import wait_dlq
from tests.support.probe import PROBE_ENV
from tests.support.stack import Stack, patched_env
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

ENV = {
    **PROBE_ENV,
    "CONVEYOR_JOBS__PROBE__BACKOFF_BASE_S": "0.05",
    "CONVEYOR_JOBS__PROBE__BACKOFF_MAX_S": "0.2",
}
NEW = dlq.Selection(statuses=("new",))


async def job_effects(db: asyncpg.Pool, job_id: str) -> list[int]:
    rows = await db.fetch("SELECT attempt FROM probe_effects WHERE job_id = $1", job_id)
    return [r["attempt"] for r in rows]


async def test_replayed_dead_letter_runs_once_with_fresh_attempts(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any
) -> None:
    # Fails three attempts, then succeeds: dead-lettered under max_attempts=2.
    job = JobEnvelope(type="probe", payload={"fail": "retryable", "fail_times": 3})
    first = worker_factory(stack, **ENV, CONVEYOR_JOBS__PROBE__MAX_ATTEMPTS="2")
    first.wait_ready()
    stack.publish([job])
    stack.publish([], raw=[b"{not json"], topic=stack.registry().topic_for("probe"))
    rows = await wait_dlq(db, stack, 2)
    by_stage = {r["stage"]: r for r in rows}
    assert set(by_stage) == {"handle", "decode"}
    dead, poison = by_stage["handle"], by_stage["decode"]
    assert dead["job_id"] == job.id and dead["attempts"] == 2
    first.stop()

    # The fix: a policy that allows enough attempts. Then replay.
    worker = worker_factory(stack, **ENV, CONVEYOR_JOBS__PROBE__MAX_ATTEMPTS="5")
    worker.wait_ready()
    settings = stack.settings()
    dry = await dlq_replay.replay(settings, NEW, dry_run=True)
    assert dry.replayed == [dead["id"]]
    assert await db.fetchval("SELECT status FROM worker_dlq WHERE id = $1", dead["id"]) == "new"

    report = await dlq_replay.replay(settings, NEW)
    assert report.replayed == [dead["id"]]
    assert report.failed == {}
    assert "stage decode" in report.skipped[poison["id"]]
    assert await eventually(
        lambda: job_effects(db, job.id), lambda a: len(a) > 0, what="replayed job's effect"
    ) == [4]
    retries = [e for e in worker.events if e.get("event") == "job.retrying"]
    assert [e["job_id"] for e in retries] == [job.id] * 3  # attempts 1-3 again: a fresh start
    row = await db.fetchrow("SELECT status, replay_count FROM worker_dlq WHERE id=$1", dead["id"])
    assert dict(row) == {"status": "replayed", "replay_count": 1}

    # Nothing new is left to replay; replaying it again is safe: the ledger skips it.
    assert (await dlq_replay.replay(settings, NEW)).replayed == []
    again = dlq.Selection(ids=[dead["id"]], statuses=("new", "replayed"))
    assert (await dlq_replay.replay(settings, again)).replayed == [dead["id"]]
    worker.wait_for(
        lambda e: (
            e.get("event") == "job.succeeded"
            and e.get("outcome") == "skipped"
            and e.get("job_id") == job.id
        )
    )
    assert await job_effects(db, job.id) == [4]

    # The CLI (in a thread: it runs its own event loop): a replay needs a
    # selection; the poison pill is resolved with a note, once.
    def cli(*argv: str) -> int:
        with patched_env(stack.env):
            return main(["dlq", *argv])

    poison_id = str(poison["id"])
    assert await asyncio.to_thread(cli, "replay") == 2
    assert await asyncio.to_thread(cli, "resolve", poison_id, "--note", "producer fixed") == 0
    assert await asyncio.to_thread(cli, "resolve", poison_id, "--note", "again") == 1
    assert await asyncio.to_thread(cli, "list", "--status", "all") == 0
    resolved = await db.fetchrow(
        "SELECT status, resolution_note FROM worker_dlq WHERE id = $1", poison["id"]
    )
    assert dict(resolved) == {"status": "resolved", "resolution_note": "producer fixed"}


async def test_a_job_dead_lettered_twice_is_replayed_once(stack: Stack, db: asyncpg.Pool) -> None:
    # What a worker SIGKILLed between the dead-letter publish and the commit
    # leaves behind: two dead letters of one job (the chaos test counts them).
    job = JobEnvelope(type="probe", payload={})
    ids = [
        await db.fetchval(
            "INSERT INTO worker_dlq (dlq_topic, dlq_partition, dlq_offset, original_topic,"
            " job_type, job_id, stage, raw_key, raw_value)"
            " VALUES ($1, 0, $2, $3, 'probe', $4, 'handle', $5, $6) RETURNING id",
            f"{stack.prefix}.dlq",
            offset,
            stack.registry().topic_for("probe"),
            job.id,
            job.id.encode(),
            job.to_bytes(),
        )
        for offset in (10, 11)
    ]
    report = await dlq_replay.replay(stack.settings(), NEW)
    assert report.replayed == [ids[0]]
    assert report.duplicates == {ids[1]: ids[0]}
    rows = await db.fetch(
        "SELECT status, resolution_note FROM worker_dlq WHERE id = ANY($1) ORDER BY id", ids
    )
    assert rows[0]["status"] == "replayed"
    assert rows[1]["status"] == "resolved"
    assert f"duplicate of dead letter {ids[0]}" in rows[1]["resolution_note"]
