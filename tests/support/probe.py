"""Publishing probe jobs and counting their effects."""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from schemas.envelope import JobEnvelope
from tests.support.stack import Stack
from tests.support.waiting import eventually

PROBE_ENV = {"CONVEYOR_JOBS__PROBE__ENABLED": "true"}


def probe_jobs(
    n: int,
    *,
    max_sleep_ms: int = 200,
    seed: int = 1,
    organizations: Sequence[str] = (),
    **payload: object,
) -> list[JobEnvelope]:
    """``n`` probe jobs sleeping up to ``max_sleep_ms`` (seeded); each of an organization
    drawn from ``organizations`` (repeat one to give it more jobs), if any."""
    rnd = random.Random(seed)
    run = uuid.uuid4().hex[:8]
    return [
        JobEnvelope(
            id=f"p-{run}-{i}",
            type="probe",
            organization_id=rnd.choice(organizations) if organizations else None,
            payload={"sleep_ms": rnd.randint(0, max_sleep_ms), **payload},
        )
        for i in range(n)
    ]


@dataclass(frozen=True)
class EffectCount:
    distinct: int
    total: int
    duplicated: int


async def effects(db: asyncpg.Pool, jobs: list[JobEnvelope]) -> EffectCount:
    ids = [j.id for j in jobs]
    row = await db.fetchrow(
        """
        SELECT count(DISTINCT job_id) AS distinct_jobs, count(*) AS total,
               count(*) - count(DISTINCT job_id) AS duplicated
        FROM probe_effects WHERE job_id = ANY($1)
        """,
        ids,
    )
    assert row is not None
    return EffectCount(row["distinct_jobs"], row["total"], row["duplicated"])


def publish_probes(stack: Stack, jobs: list[JobEnvelope]) -> None:
    stack.publish(jobs)


async def wait_done(
    db: asyncpg.Pool,
    jobs: list[JobEnvelope],
    n: float | None = None,
    *,
    timeout_s: float = 120.0,
    what: str = "every job done",
) -> EffectCount:
    """Wait until ``n`` (default: all) of ``jobs`` have their effect; the count then."""
    target = len(jobs) if n is None else n
    return await eventually(
        lambda: effects(db, jobs), lambda c: c.distinct >= target, timeout_s=timeout_s, what=what
    )
