"""crm.webhook against the real Postgres: verified, stored once, last write wins, tombstones."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest
from structlog.testing import capture_logs

from handlers.crm import webhook
from handlers.deps import Deps
from handlers.errors import PermanentError
from handlers.types import Job, Outcome
from schemas.jobs import CrmWebhook
from tests.support.crm import (
    crm_deps,
    delivery_body,
    job,
    register_account,
    services,
    signed_hook,
)
from tests.support.kommo_server import form_encode, kommo_server

pytestmark = pytest.mark.integration

SECRET = "whsec-" + uuid.uuid4().hex
T0 = 1_759_572_000


@dataclass
class Kit:
    db: asyncpg.Pool
    deps: Deps
    connection_id: str

    def delivery(
        self, tree: dict[str, Any], *, event_id: str | None = None, timestamp: int | None = None
    ) -> CrmWebhook:
        body = delivery_body(tree)
        return signed_hook(SECRET, self.connection_id, body, event_id=event_id, timestamp=timestamp)

    async def send(self, hook: CrmWebhook) -> Outcome:
        return await webhook.handle(job("crm.webhook", hook), self.deps)

    async def lead(self, lead_id: int) -> asyncpg.Record | None:
        async with self.db.acquire() as conn:
            return await conn.fetchrow(
                "SELECT * FROM crm_leads WHERE connection_id = $1 AND lead_id = $2",
                self.connection_id,
                lead_id,
            )

    async def deliveries(self) -> list[asyncpg.Record]:
        async with self.db.acquire() as conn:
            return await conn.fetch(
                "SELECT * FROM crm_webhook_events WHERE connection_id = $1 ORDER BY id",
                self.connection_id,
            )


@pytest.fixture
async def kit(db: asyncpg.Pool) -> AsyncIterator[Kit]:
    async with kommo_server() as server, aiohttp.ClientSession() as session:
        new = await register_account(db, server, webhook_secret=SECRET)
        yield Kit(db, crm_deps(db, session, services(session)), new.id)


def _signed(hook: CrmWebhook) -> tuple[str, str, int, str]:
    return hook.connection_id, hook.event_id, hook.timestamp, hook.body


def lead_update(lead_id: int, at: int, **fields: Any) -> dict[str, Any]:
    return {"leads": {"update": [{"id": lead_id, "last_modified": at, **fields}]}}


async def test_a_signed_delivery_is_applied_once(kit: Kit) -> None:
    hook = kit.delivery(
        {
            "leads": {
                "add": [{"id": 10, "name": "New", "price": 1500, "status_id": 1, "date_create": T0}]
            },
            "contacts": {"add": [{"id": 20, "name": "Ann", "last_modified": T0}]},
        }
    )
    assert await kit.send(hook) == Outcome.SUCCEEDED
    lead = await kit.lead(10)
    assert lead is not None and (lead["name"], lead["price"], lead["deleted"]) == (
        "New",
        1500,
        False,
    )
    async with kit.db.acquire() as conn:
        contact = await conn.fetchval(
            "SELECT name FROM crm_contacts WHERE connection_id = $1 AND contact_id = 20",
            kit.connection_id,
        )
    assert contact == "Ann"
    assert await kit.send(hook) == Outcome.SKIPPED  # the same delivery again
    (stored,) = await kit.deliveries()
    assert (stored["event_id"], stored["applied"], stored["stale"]) == (hook.event_id, 2, 0)
    assert stored["body"] == hook.body


async def test_a_missing_or_wrong_signature_is_permanent_and_nothing_is_applied(kit: Kit) -> None:
    tree = lead_update(11, T0, name="Forged")
    good = kit.delivery(tree)
    other = webhook.signature_of("not-the-secret-0123456789abcdef01234", *_signed(good))
    for signature in (other, "sha256=", "x"):
        forged = good.model_copy(update={"signature": signature})
        with pytest.raises(PermanentError, match="signature is missing or wrong"):
            await kit.send(forged)
    tampered = good.model_copy(update={"body": good.body.replace("Forged", "Evil")})
    with pytest.raises(PermanentError):
        await kit.send(tampered)
    assert await kit.lead(11) is None and await kit.deliveries() == []


async def test_last_write_wins_by_kommos_time_and_deletes_are_tombstones(kit: Kit) -> None:
    await kit.send(kit.delivery(lead_update(12, T0 + 200, name="v200", status_id=2)))
    late = await kit.send(kit.delivery(lead_update(12, T0 + 100, name="v100", status_id=1)))
    assert late == Outcome.SUCCEEDED
    lead = await kit.lead(12)
    assert lead is not None and (lead["name"], lead["status_id"]) == ("v200", 2)
    assert [d["stale"] for d in await kit.deliveries()] == [0, 1]
    partial = kit.delivery(
        {"leads": {"status": [{"id": 12, "status_id": 3, "last_modified": T0 + 250}]}}
    )
    await kit.send(partial)
    lead = await kit.lead(12)
    assert lead is not None and (lead["name"], lead["status_id"]) == ("v200", 3)

    await kit.send(kit.delivery({"leads": {"delete": [{"id": 12, "last_modified": T0 + 300}]}}))
    await kit.send(kit.delivery(lead_update(12, T0 + 300, name="same second as the delete")))
    await kit.send(kit.delivery(lead_update(12, T0 + 280, name="late")))
    lead = await kit.lead(12)
    assert lead is not None and lead["deleted"] and lead["name"] == "v200"
    await kit.send(kit.delivery({"leads": {"restore": [{"id": 12, "last_modified": T0 + 400}]}}))
    lead = await kit.lead(12)
    assert lead is not None and not lead["deleted"]


async def test_a_delete_without_kommos_time_wins_over_any_earlier_update(kit: Kit) -> None:
    now = int(time.time())
    await kit.send(kit.delivery(lead_update(13, now - 60, name="before")))
    await kit.send(kit.delivery({"leads": {"delete": [{"id": 13, "status_id": 143}]}}))
    replayed = kit.delivery(lead_update(13, now - 30, name="replayed"))
    await kit.send(replayed)
    lead = await kit.lead(13)
    assert lead is not None and lead["deleted"] and lead["name"] == "before"
    (*_, last) = await kit.deliveries()
    assert last["event_id"] == replayed.event_id and last["stale"] == 1


async def test_unknown_kinds_are_stored_and_reported_not_failed(kit: Kit) -> None:
    hook = kit.delivery(
        {
            "task": {"add": [{"id": 5, "text": "Call back"}]},
            "contacts": {"update": [{"id": 30, "type": "company", "name": "Acme"}]},
            "leads": {"note": [{"note": {"id": 1, "element_id": 12, "text": "hello"}}]},
            "message": {"add": [{"id": "m1", "type": "incoming", "text": "Hi", "contact_id": 9}]},
        }
    )
    with capture_logs() as logs:
        assert await kit.send(hook) == Outcome.SUCCEEDED
    (stored,) = await kit.deliveries()
    assert stored["unknown_kinds"] == ["companies.update", "task.add"]
    assert stored["applied"] == 0
    warned = [e for e in logs if e["event"] == "crm.webhook_unknown_kinds"]
    assert warned and warned[0]["unknown_kinds"] == ["companies.update", "task.add"]
    applied = next(e for e in logs if e["event"] == "crm.webhook_applied")
    assert applied["kinds"] == {
        "task.add": 1,
        "companies.update": 1,
        "leads.note": 1,
        "message.add": 1,
    }
    assert SECRET not in repr(logs)


async def test_two_copies_of_one_delivery_at_once_apply_once(kit: Kit) -> None:
    hook = kit.delivery(lead_update(14, T0, name="once"))
    outcomes = await asyncio.gather(kit.send(hook), kit.send(hook))
    assert sorted(outcomes) == [Outcome.SKIPPED, Outcome.SUCCEEDED]
    assert len(await kit.deliveries()) == 1


async def test_a_delivery_republished_under_a_new_event_id_is_refused(kit: Kit) -> None:
    """Issue 19's replay: whoever saw one delivery (the Kafka record, a dead letter, the
    stored body) republishes it with a new event id: the id is signed, so it fails."""
    seen = kit.delivery(lead_update(21, T0, name="once"))
    assert await kit.send(seen) == Outcome.SUCCEEDED
    again = seen.model_copy(update={"event_id": f"evt-{uuid.uuid4().hex[:10]}"})
    with pytest.raises(PermanentError, match="signature is missing or wrong"):
        await kit.send(again)
    assert await kit.send(seen) == Outcome.SKIPPED  # the same id: stored once
    assert [d["event_id"] for d in await kit.deliveries()] == [seen.event_id]


async def test_a_delivery_past_the_window_or_of_another_account_is_refused(kit: Kit) -> None:
    old = kit.delivery(lead_update(22, T0, name="old"), timestamp=int(time.time()) - 86_401)
    with pytest.raises(PermanentError, match="possible replay"):
        await kit.send(old)
    body = delivery_body(lead_update(22, T0, name="other account"), subdomain="evil")
    other = signed_hook(SECRET, kit.connection_id, body)
    with pytest.raises(PermanentError, match="names account 'evil', not the connection's"):
        await kit.send(other)
    no_account = signed_hook(SECRET, kit.connection_id, form_encode(lead_update(22, T0)))
    with pytest.raises(PermanentError, match="names account None"):
        await kit.send(no_account)
    assert await kit.lead(22) is None and await kit.deliveries() == []


async def test_a_webhook_job_of_another_organization_is_refused(kit: Kit) -> None:
    hook = kit.delivery(lead_update(23, T0, name="cross-tenant"))
    for organization_id in ("org-2", None):
        wrong = Job("job-x", "crm.webhook", 1, organization_id, hook)
        with pytest.raises(PermanentError, match="belongs to another organization"):
            await webhook.handle(wrong, kit.deps)
    assert await kit.lead(23) is None


async def test_a_late_delete_does_not_bury_a_lead_restored_after_it(kit: Kit) -> None:
    """A delete carries no time of Kommo's: it is dated by its signed delivery time, so one
    that arrives (or is replayed) after a later restore is stale, not applied at now()."""
    now = int(time.time())
    await kit.send(kit.delivery(lead_update(24, now - 300, name="v1")))
    delete = kit.delivery({"leads": {"delete": [{"id": 24}]}}, timestamp=now - 200)
    await kit.send(kit.delivery({"leads": {"restore": [{"id": 24, "last_modified": now - 100}]}}))
    assert await kit.send(delete) == Outcome.SUCCEEDED  # delivered late, after the restore
    lead = await kit.lead(24)
    assert lead is not None and not lead["deleted"], "the restore (newer) stands"
    assert (await kit.deliveries())[-1]["stale"] == 1
    newer = kit.delivery({"leads": {"delete": [{"id": 24}]}}, timestamp=now - 50)
    await kit.send(newer)
    lead = await kit.lead(24)
    assert lead is not None and lead["deleted"], "a delete after the restore applies"


async def test_a_nul_in_a_delivery_is_removed_not_a_permanent_failure(kit: Kit) -> None:
    """``%00`` decodes to NUL, which Postgres refuses: the delivery was dead-lettered for
    good (issue 19). It is applied without the NUL, and the removal is reported."""
    body = delivery_body(lead_update(25, T0, name="A%00B")).replace("A%2500B", "A%00B")
    assert "A%00B" in body
    hook = signed_hook(SECRET, kit.connection_id, body)
    with capture_logs() as logs:
        assert await kit.send(hook) == Outcome.SUCCEEDED
    lead = await kit.lead(25)
    assert lead is not None and lead["name"] == "AB"
    (stored,) = [d for d in await kit.deliveries() if d["event_id"] == hook.event_id]
    assert stored["body"] == body and "\x00" not in stored["events"]
    removed = [e for e in logs if e["event"] == "crm.webhook_nul_removed"]
    assert removed and removed[0]["removed"] == 1
