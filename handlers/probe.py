"""``probe``: a diagnostic job for reliability tests and benchmarks.

It sleeps, optionally fails on purpose (or kills its own worker process,
to test the crash-loop guard), then records one row in
``probe_effects`` in the same transaction as its ledger row, so tests can
count effects and prove each job applied exactly once. With ``trace`` it
logs when it started and ended (``probe.ran``; the runner adds the record's
partition and offset), so tests can see which jobs ran side by side.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import structlog

from handlers import ledger
from handlers.deps import Deps
from handlers.errors import PermanentError, RetryableError
from handlers.types import Job, Outcome
from schemas.jobs import Probe

log = structlog.get_logger(__name__)

INSERT_EFFECT = "INSERT INTO probe_effects (job_id, attempt) VALUES ($1, $2)"


async def handle(job: Job[Probe], deps: Deps) -> Outcome:
    if not job.payload.trace:
        return await _handle(job, deps)
    started = time.time()
    try:
        return await _handle(job, deps)
    finally:
        log.info("probe.ran", started_at=started, ended_at=time.time())


async def _handle(job: Job[Probe], deps: Deps) -> Outcome:
    probe = job.payload
    if probe.sleep_ms:
        await asyncio.sleep(probe.sleep_ms / 1000)
    if job.attempt <= probe.fail_times or (probe.fail != "none" and probe.fail_times == 0):
        await _fail(probe.fail)
    if not probe.record:
        return Outcome.SUCCEEDED
    async with deps.db.acquire() as conn, conn.transaction():
        if not await ledger.claim(conn, job.id, job.type):
            return Outcome.SKIPPED
        await conn.execute(INSERT_EFFECT, job.id, job.attempt)
    return Outcome.SUCCEEDED


async def _fail(mode: str) -> None:
    if mode == "retryable":
        raise RetryableError("probe asked to fail (retryable)")
    if mode == "permanent":
        raise PermanentError("probe asked to fail (permanent)")
    if mode == "hang":
        await asyncio.Event().wait()
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
