"""Several workers syncing connections of one Kommo account, each with its own limiter.

A worker here is what a pod has: its own HTTP session, its own
``CrmServices`` (so its own AdaptiveLimiter per account) and its own
Postgres pool. Each worker runs ``concurrency`` loops; each loop runs the
real ``crm.sync_pipelines`` handler on its own connection (every connection
of the same account) again and again until the time is up. The account is a
local Kommo server that accepts at most 7 requests in any second.

Used by tests/integration/test_crm_rate.py and bench/kommo_limit.py.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import asyncpg

from handlers.crm import sync
from handlers.types import Outcome
from schemas.jobs import CrmSyncPipelines
from tests.support.crm import crm_deps, job, register_account, services
from tests.support.kommo_server import KommoServer, make_fields, make_pipelines

LIMIT = 7


@dataclass
class Load:
    """What the account saw and how the jobs ended, over the measured span."""

    workers: int
    duration_s: float
    accepted: int = 0
    throttled: int = 0
    jobs: Counter[str] = field(default_factory=Counter)  # outcome or error class
    syncs_per_worker: list[int] = field(default_factory=list)
    final_rates: list[float] = field(default_factory=list)

    @property
    def utilisation(self) -> float:
        """Accepted requests per second, as a share of the account's 7/s."""
        return self.accepted / (LIMIT * self.duration_s)

    @property
    def failed(self) -> int:
        return sum(n for outcome, n in self.jobs.items() if outcome != Outcome.SUCCEEDED.value)

    def line(self) -> str:
        return (
            f"{self.workers} worker(s), {self.duration_s:.0f} s: "
            f"{self.accepted / self.duration_s:.2f} req/s accepted = {self.utilisation:.1%} "
            f"of {LIMIT}/s, {self.throttled} x 429, jobs {dict(self.jobs)}, "
            f"syncs per worker {self.syncs_per_worker}, "
            f"final limiter rates {', '.join(f'{r:.2f}' for r in self.final_rates)}"
        )


def small_account(server: KommoServer) -> None:
    """Two pipelines and a page of fields per entity: a sync is four requests."""
    server.pipelines = make_pipelines(2, 5)
    for i, entity in enumerate(("leads", "contacts", "companies")):
        server.custom_fields[entity] = make_fields(entity, 5, 100_000 * (i + 1))


async def run_workers(
    dsn: str, server: KommoServer, workers: int, concurrency: int, duration_s: float
) -> Load:
    """Run the workers for ``duration_s`` and count what the account accepted meanwhile."""
    pools = [
        await asyncpg.create_pool(dsn, min_size=1, max_size=concurrency + 1) for _ in range(workers)
    ]
    try:
        connection_ids = [
            [(await register_account(pool, server)).id for _ in range(concurrency)]
            for pool in pools
        ]
        load = Load(workers, duration_s)
        started = time.monotonic()
        until = started + duration_s
        finished = await asyncio.gather(
            *(
                _worker(pool, server.base_url, ids, until, load)
                for pool, ids in zip(pools, connection_ids, strict=True)
            )
        )
    finally:
        for pool in pools:
            await pool.close()
    load.final_rates = [rate for rate, _ in finished]
    load.syncs_per_worker = [syncs for _, syncs in finished]
    measured = [h for h in server.hits if started <= h.arrived < until]
    load.accepted = sum(1 for h in measured if h.status == 200)
    load.throttled = sum(1 for h in measured if h.status == 429)
    return load


async def _worker(
    pool: asyncpg.Pool, account: str, connection_ids: list[str], until: float, load: Load
) -> tuple[float, int]:
    """One pod: returns its limiter's final rate and the syncs it completed."""
    async with aiohttp.ClientSession() as session:
        crm = services(session, timeout_s=10.0)
        deps = crm_deps(pool, session, crm)
        syncs = 0

        async def loop(connection_id: str) -> None:
            nonlocal syncs
            payload = CrmSyncPipelines(connection_id=connection_id)
            while time.monotonic() < until:
                try:
                    outcome = await sync.handle(job("crm.sync_pipelines", payload), deps)
                except Exception as exc:  # counted: the test asserts there are none
                    load.jobs[type(exc).__name__] += 1
                    continue
                load.jobs[outcome.value] += 1
                syncs += 1

        await asyncio.gather(*(loop(c) for c in connection_ids))
        return crm.kommo.limiter(account).rate, syncs
