"""crm.sync_pipelines on a large account: 50 pipelines x 20 statuses and 1,000 custom fields.

A local Kommo account (tests/support/kommo_server.py, 7 requests/s enforced)
holds 50 pipelines of 20 statuses each (Kommo's own maximum is 50
pipelines) and 1,000 custom fields (500 of leads, 300 of contacts, 200 of
companies). The real handler syncs it into a throwaway database on the
local Postgres, three times: into an empty database, again with nothing
changed, and after 10 % of the statuses and fields changed.

Baseline in the same run: the fetch alone (the same API calls through the
same client and limiter, nothing written), so the ratio shows what the
database apply adds to the time Kommo's rate limit already imposes.

    eval "$(scripts/services env)"; .venv/bin/python -m bench.crm_sync
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import asyncpg
import structlog

from bench.scratch import scratch_database
from handlers.crm import connections, sync
from handlers.deps import Deps
from handlers.types import Outcome
from schemas.jobs import CrmSyncPipelines
from tests.support.crm import crm_deps, job, register_account, services
from tests.support.kommo_server import KommoServer, kommo_server, make_fields, make_pipelines

FIELDS = {"leads": 500, "contacts": 300, "companies": 200}


def _account(server: KommoServer) -> None:
    server.pipelines = make_pipelines(50, 20)
    for i, (entity, count) in enumerate(FIELDS.items()):
        server.custom_fields[entity] = make_fields(entity, count, 1_000_000 * (i + 1))


def _change_a_tenth(server: KommoServer) -> None:
    for p in server.pipelines[::10]:
        for status in p["_embedded"]["statuses"]:
            status["name"] += " (renamed)"
    for found in server.custom_fields.values():
        del found[::10]


async def _timed_sync(kit: tuple[KommoServer, Deps, str], label: str) -> float:
    server, deps, connection_id = kit
    calls = sum(server.calls.values())
    started = time.perf_counter()
    payload = CrmSyncPipelines(connection_id=connection_id)
    outcome = await sync.handle(job("crm.sync_pipelines", payload), deps)
    elapsed = time.perf_counter() - started
    assert outcome == Outcome.SUCCEEDED
    print(f"{label}: {elapsed:.2f} s, {sum(server.calls.values()) - calls} API calls")
    return elapsed


async def _fetch_only(server: KommoServer, deps: Deps, connection_id: str) -> float:
    assert deps.crm is not None
    async with deps.db.acquire() as conn:
        connection = await connections.load(conn, connection_id)
    client = deps.crm.client(deps.db, connection)
    started = time.perf_counter()
    snapshot = await sync.fetch(client)
    elapsed = time.perf_counter() - started
    counts = snapshot.counts
    print(
        f"baseline, fetch only: {elapsed:.2f} s, {client.calls} API calls "
        f"({counts[0]} pipelines, {counts[1]} statuses, {counts[2]} fields)"
    )
    return elapsed


async def run(dsn: str) -> None:
    db = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    try:
        async with kommo_server() as server, aiohttp.ClientSession() as session:
            _account(server)
            new = await register_account(db, server)
            # One worker: the same client config and account limiter for every run.
            deps = crm_deps(db, session, services(session, timeout_s=20.0))
            kit = (server, deps, new.id)
            baseline = await _fetch_only(server, deps, new.id)
            first = await _timed_sync(kit, "sync into an empty database")
            await _timed_sync(kit, "sync again, nothing changed")
            _change_a_tenth(server)
            await _timed_sync(kit, "sync after 10 % changed")
            throttled = sum(1 for h in server.hits if h.status == 429)
            print(f"429 answers in all runs: {throttled}")
            print(f"ratio first sync / fetch only: {first / baseline:.2f}")
    finally:
        await db.close()


async def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    async with scratch_database() as dsn:
        await run(dsn)


if __name__ == "__main__":
    asyncio.run(main())
