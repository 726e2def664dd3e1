"""crm.sync_pipelines against the real Postgres and a local Kommo account."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from handlers.crm import connections, sync, sync_lease
from handlers.deps import Deps
from handlers.errors import Deferred, PermanentError, RetryableError
from handlers.types import Job, Outcome
from schemas.jobs import CrmSyncPipelines
from streams.retry import WaitForDependency, decide
from streams.settings import Settings
from tests.support.crm import crm_deps, job, register_account, services
from tests.support.kommo_server import Fault, KommoServer, kommo_server, make_fields, make_pipelines

pytestmark = pytest.mark.integration

POLICY = Settings().jobs.crm_sync_pipelines
CONTACT_FIELDS = "GET /api/v4/contacts/custom_fields"
PIPELINES = "GET /api/v4/leads/pipelines"


@dataclass
class Kit:
    db: asyncpg.Pool
    server: KommoServer
    deps: Deps
    connection_id: str

    async def sync(
        self, job_id: str | None = None, requested_at: datetime | None = None
    ) -> Outcome:
        payload = CrmSyncPipelines(connection_id=self.connection_id)
        request = job("crm.sync_pipelines", payload, job_id, created_at=requested_at)
        return await sync.handle(request, self.deps)

    async def connection(self) -> connections.Connection:
        async with self.db.acquire() as conn:
            return await connections.load(conn, self.connection_id)

    async def stored(self) -> dict[str, Any]:
        async with self.db.acquire() as conn:
            pipelines = await conn.fetch(
                "SELECT pipeline_id, name, sort, is_main FROM crm_pipelines"
                " WHERE connection_id = $1",
                self.connection_id,
            )
            statuses = await conn.fetch(
                "SELECT pipeline_id, status_id, name, sort, type FROM crm_pipeline_statuses"
                " WHERE connection_id = $1",
                self.connection_id,
            )
            fields = await conn.fetch(
                "SELECT entity_type, field_id, name, type, enums::text AS enums"
                " FROM crm_custom_fields WHERE connection_id = $1",
                self.connection_id,
            )
        return {
            "pipelines": {tuple(r) for r in pipelines},
            "statuses": {tuple(r) for r in statuses},
            "fields": {(r["entity_type"], r["field_id"], r["name"], r["type"]) for r in fields},
        }

    def expected(self) -> dict[str, Any]:
        s = self.server
        return {
            "pipelines": {(p["id"], p["name"], p["sort"], p["is_main"]) for p in s.pipelines},
            "statuses": {
                (p["id"], st["id"], st["name"], st["sort"], st["type"])
                for p in s.pipelines
                for st in p["_embedded"]["statuses"]
            },
            "fields": {
                (entity, f["id"], f["name"], f["type"])
                for entity, found in s.custom_fields.items()
                for f in found
            },
        }


@pytest.fixture
async def kit(db: asyncpg.Pool) -> AsyncIterator[Kit]:
    async with kommo_server(rate_limit=None) as server, aiohttp.ClientSession() as session:
        server.pipelines = make_pipelines(3, 5)
        server.custom_fields["leads"] = make_fields("leads", 300, 500_000)
        server.custom_fields["contacts"] = make_fields("contacts", 10, 600_000)
        new = await register_account(db, server)
        yield Kit(db, server, crm_deps(db, session, services(session)), new.id)


async def test_a_sync_stores_every_pipeline_status_and_field_and_records_it(kit: Kit) -> None:
    assert await kit.sync() == Outcome.SUCCEEDED
    assert await kit.stored() == kit.expected()
    c = await kit.connection()
    assert (c.sync_state, c.sync_error) == ("succeeded", None)
    assert (c.sync_pipelines, c.sync_statuses, c.sync_custom_fields) == (3, 15, 310)
    # pipelines 1 + leads fields 2 pages + contacts 1 + companies 1 (204: none)
    assert c.sync_api_calls == 5 == sum(kit.server.calls.values())
    assert c.sync_finished_at is not None and c.sync_started_at is not None


async def test_the_next_sync_applies_the_diff_and_leaves_unchanged_rows_alone(kit: Kit) -> None:
    await kit.sync()
    async with kit.db.acquire() as conn:
        before = await conn.fetchval(
            "SELECT synced_at FROM crm_pipeline_statuses WHERE connection_id = $1"
            " AND status_id = 142 AND pipeline_id = $2",
            kit.connection_id,
            kit.server.pipelines[1]["id"],
        )
    server = kit.server
    server.pipelines[0]["name"] = "Renamed"
    removed_pipeline = server.pipelines.pop(2)
    statuses = server.pipelines[1]["_embedded"]["statuses"]
    statuses.pop(0)
    statuses.append({**statuses[0], "id": 999, "name": "New stage", "sort": 90})
    server.custom_fields["leads"] = server.custom_fields["leads"][:100]
    server.custom_fields["leads"][0]["name"] = "Renamed field"
    server.custom_fields["companies"] = make_fields("companies", 5, 700_000)
    assert await kit.sync() == Outcome.SUCCEEDED
    stored = await kit.stored()
    assert stored == kit.expected()
    assert removed_pipeline["id"] not in {p[0] for p in stored["pipelines"]}
    c = await kit.connection()
    assert c.sync_custom_fields == 115
    async with kit.db.acquire() as conn:
        after = await conn.fetchval(
            "SELECT synced_at FROM crm_pipeline_statuses WHERE connection_id = $1"
            " AND status_id = 142 AND pipeline_id = $2",
            kit.connection_id,
            server.pipelines[1]["id"],
        )
        removed = await conn.fetchval(
            "SELECT sync_removed FROM crm_connections WHERE id = $1", kit.connection_id
        )
    assert after == before  # an unchanged status was not rewritten
    assert removed == 1 + 5 + 1 + 200  # statuses of the gone pipeline, its row, a status, fields


async def test_a_failed_sync_leaves_the_previous_state_whole(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    await kit.sync()
    previous = await kit.stored()
    kit.server.pipelines[0]["name"] = "Should not appear"
    kit.server.pipelines.pop()
    kit.server.custom_fields["leads"] = []
    kit.server.faults.extend([Fault.answer(500, CONTACT_FIELDS)] * 4)
    with pytest.raises(RetryableError, match="HTTP 500"):
        await kit.sync()
    assert await kit.stored() == previous
    c = await kit.connection()
    assert c.sync_state == "failed" and "HTTP 500" in (c.sync_error or "")

    async def broken(*args: Any) -> None:
        raise RuntimeError("the database went away mid-apply")

    monkeypatch.setattr(sync_lease, "finish_sync", broken)
    with pytest.raises(RuntimeError):
        await kit.sync()
    assert await kit.stored() == previous  # the apply transaction rolled back
    c = await kit.connection()  # recorded, and the lease released (this failed before)
    assert c.sync_state == "failed" and "RuntimeError: the database went away" in (
        c.sync_error or ""
    )
    monkeypatch.undo()
    assert await kit.sync() == Outcome.SUCCEEDED
    assert await kit.stored() == kit.expected() != previous


async def test_two_syncs_of_one_connection_never_interleave(kit: Kit) -> None:
    kit.server.faults.append(Fault("slow", delay_s=1.0, route=PIPELINES))
    first = asyncio.create_task(kit.sync("job-first"))
    await kit.server.wait_for_call(PIPELINES)  # claimed, and now fetching
    assert (await kit.connection()).sync_state == "running"
    with pytest.raises(Deferred, match="another sync") as caught:
        await kit.sync("job-second")
    assert caught.value.delay_s == sync.BUSY_RETRY_S
    assert await first == Outcome.SUCCEEDED
    assert await kit.sync("job-second") == Outcome.SUCCEEDED
    async with kit.db.acquire() as conn:  # a sync whose worker died: its lease runs out
        await conn.execute(
            "UPDATE crm_connections SET sync_state = 'running', sync_job_id = 'dead',"
            " sync_lease_until = now() - interval '1 second' WHERE id = $1",
            kit.connection_id,
        )
    assert await kit.sync("job-third") == Outcome.SUCCEEDED


async def test_syncs_requested_during_a_sync_wait_without_an_attempt_and_coalesce(
    kit: Kit,
) -> None:
    """A burst of requests while a sync runs makes one more sync, not one each.

    Before, the second request failed an attempt ("another sync ... is
    running") and every request ran a sync of its own.
    """
    before = datetime.now(UTC) - timedelta(seconds=1)
    kit.server.faults.append(Fault("slow", delay_s=1.0, route=PIPELINES))
    first = asyncio.create_task(kit.sync("job-first"))
    await kit.server.wait_for_call(PIPELINES)
    during = datetime.now(UTC)
    for job_id in ("job-b", "job-c"):
        with pytest.raises(Deferred):
            await kit.sync(job_id, requested_at=during)
    assert isinstance(decide(Deferred("busy", delay_s=5.0), 3, POLICY), WaitForDependency), (
        "waiting for another sync spends no attempt"
    )
    assert await first == Outcome.SUCCEEDED
    assert await kit.sync("job-early", requested_at=before) == Outcome.SKIPPED, (
        "requested before the first sync started: that sync covers it"
    )
    assert await kit.sync("job-b", requested_at=during) == Outcome.SUCCEEDED, "runs after it"
    assert await kit.sync("job-c", requested_at=during) == Outcome.SKIPPED, "b's sync covers c"
    assert kit.server.calls[PIPELINES] == 2, "two syncs for four requests"


async def test_a_connection_needing_consent_or_a_worker_without_keyring_fails_permanently(
    kit: Kit,
) -> None:
    async with kit.db.acquire() as conn:
        await conn.execute(
            "UPDATE crm_connections SET needs_reauth = true WHERE id = $1", kit.connection_id
        )
    with pytest.raises(PermanentError, match="needs re-consent"):
        await kit.sync()
    no_keyring = crm_deps(kit.db, kit.deps.http, None)
    payload = CrmSyncPipelines(connection_id=kit.connection_id)
    with pytest.raises(PermanentError, match=r"crm\.keyring"):
        await sync.handle(job("crm.sync_pipelines", payload), no_keyring)
    with pytest.raises(PermanentError, match="no CRM connection"):
        await sync.handle(
            job("crm.sync_pipelines", CrmSyncPipelines(connection_id="nope")), kit.deps
        )
    assert sum(kit.server.calls.values()) == 0


@pytest.mark.parametrize("organization_id", [None, "org-someone-else"])
async def test_a_sync_of_another_or_no_organization_is_refused(
    kit: Kit, organization_id: str | None
) -> None:
    payload = CrmSyncPipelines(connection_id=kit.connection_id)
    foreign = Job("job-foreign", "crm.sync_pipelines", 1, organization_id, payload)
    with pytest.raises(PermanentError, match="belongs to another organization"):
        await sync.handle(foreign, kit.deps)
    assert sum(kit.server.calls.values()) == 0
    assert (await kit.connection()).sync_state == "never"
