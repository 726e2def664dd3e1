"""``crm.webhook``: a Kommo webhook delivery, verified, stored once and applied.

1. Verify (docs/KOMMO.md, "The signature contract"): the edge signs
   ``conveyor-webhook-v1\\n<timestamp>\\n<connection_id>\\n<event_id>\\n<body>``
   with HMAC-SHA256 under the connection's webhook secret (lowercase hex,
   ``sha256=`` prefix allowed), compared in constant time. A missing or wrong
   signature, a delivery older than ``crm.webhook_max_age_s`` (or dated in the
   future), a body naming another account than the connection's, or a job of
   another organization: PermanentError (dead-lettered with that reason),
   nothing stored or applied. So a delivery seen once cannot be republished
   with a new event id (the id is signed), nor with the same id (stored once),
   nor after its dedup row could be gone (too old).
2. Parse the form-encoded nested keys into typed events (handlers/crm/events.py).
3. In one transaction: store the delivery once (unique on connection and
   event id; a duplicate is skipped) and apply its lead and contact events,
   last write wins by Kommo's own ``updated_at``: a duplicate, late or
   replayed delivery never overwrites newer state. Deletes are kept as
   tombstones and obey the same rule; a delete without Kommo's time (Kommo
   sends none) takes the delivery's signed time, so it never buries a restore
   or an update Kommo made after it. Notes, messages and unknown kinds are
   stored with the delivery and reported, not failed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from handlers.crm import connections
from handlers.crm.connections import MIN_WEBHOOK_SECRET_CHARS, WebhookTarget
from handlers.crm.crypto import DecryptError
from handlers.crm.events import Delivery, EntityEvent, Event, UnknownEvent, parse_delivery
from handlers.crm.services import require
from handlers.db import Connection as DbConnection
from handlers.deps import Deps
from handlers.errors import PermanentError
from handlers.types import Job, Outcome
from schemas.jobs import CrmWebhook

log = structlog.get_logger(__name__)

UNTIMED = datetime(1970, 1, 1, tzinfo=UTC)  # an event without a timestamp: any timed one wins
SIGNED_PREFIX = "conveyor-webhook-v1"
MAX_FUTURE_S = 300  # the edge's clock may run this far ahead of ours

STORE = """
INSERT INTO crm_webhook_events (connection_id, event_id, job_id, body, events, unknown_kinds)
VALUES ($1, $2, $3, $4, $5::jsonb, $6)
ON CONFLICT (connection_id, event_id) DO NOTHING
RETURNING id
"""
RECORD = "UPDATE crm_webhook_events SET applied = $2, stale = $3 WHERE id = $1"

# Apply when Kommo's time is newer; on a tie, unless the row is a tombstone.
# Values the event does not carry keep what we knew.
NEWER = """
WHERE EXCLUDED.kommo_updated_at > t.kommo_updated_at
   OR (EXCLUDED.kommo_updated_at = t.kommo_updated_at AND NOT t.deleted)
"""
UPSERT_LEAD = f"""
INSERT INTO crm_leads AS t (connection_id, lead_id, name, status_id, pipeline_id, price,
                            responsible_user_id, kommo_updated_at, fields, event_id)
VALUES ($1, $2, $3, $4, $5, $6::numeric, $7, $8, $9::jsonb, $10)
ON CONFLICT (connection_id, lead_id) DO UPDATE SET
    name = COALESCE(EXCLUDED.name, t.name),
    status_id = COALESCE(EXCLUDED.status_id, t.status_id),
    pipeline_id = COALESCE(EXCLUDED.pipeline_id, t.pipeline_id),
    price = COALESCE(EXCLUDED.price, t.price),
    responsible_user_id = COALESCE(EXCLUDED.responsible_user_id, t.responsible_user_id),
    kommo_updated_at = EXCLUDED.kommo_updated_at, deleted = false,
    fields = EXCLUDED.fields, event_id = EXCLUDED.event_id, applied_at = now()
{NEWER}RETURNING lead_id
"""
UPSERT_CONTACT = f"""
INSERT INTO crm_contacts AS t (connection_id, contact_id, name, responsible_user_id,
                               kommo_updated_at, fields, event_id)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)
ON CONFLICT (connection_id, contact_id) DO UPDATE SET
    name = COALESCE(EXCLUDED.name, t.name),
    responsible_user_id = COALESCE(EXCLUDED.responsible_user_id, t.responsible_user_id),
    kommo_updated_at = EXCLUDED.kommo_updated_at, deleted = false,
    fields = EXCLUDED.fields, event_id = EXCLUDED.event_id, applied_at = now()
{NEWER}RETURNING contact_id
"""
TOMBSTONE = """
INSERT INTO {table} AS t (connection_id, {key}, kommo_updated_at, deleted, fields, event_id)
VALUES ($1, $2, $3, true, $4::jsonb, $5)
ON CONFLICT (connection_id, {key}) DO UPDATE SET
    kommo_updated_at = EXCLUDED.kommo_updated_at, deleted = true,
    event_id = EXCLUDED.event_id, applied_at = now()
WHERE EXCLUDED.kommo_updated_at >= t.kommo_updated_at
RETURNING {key}
"""
TOMBSTONES = {
    "leads": TOMBSTONE.format(table="crm_leads", key="lead_id"),
    "contacts": TOMBSTONE.format(table="crm_contacts", key="contact_id"),
}


@dataclass(frozen=True, slots=True)
class Applied:
    applied: int
    stale: int


def signed_text(connection_id: str, event_id: str, timestamp: int, body: str) -> bytes:
    """Exactly what the edge signs (UTF-8): the fields joined by newlines, body last."""
    return f"{SIGNED_PREFIX}\n{timestamp}\n{connection_id}\n{event_id}\n{body}".encode()


def signature_of(secret: str, connection_id: str, event_id: str, timestamp: int, body: str) -> str:
    """What the platform's edge sends: hex HMAC-SHA256 of ``signed_text``."""
    text = signed_text(connection_id, event_id, timestamp, body)
    return hmac.new(secret.encode("utf-8"), text, hashlib.sha256).hexdigest()


def verify(secret: str, hook: CrmWebhook, max_age_s: float, now: float | None = None) -> None:
    """Raise PermanentError unless ``hook`` is signed with ``secret`` and fresh."""
    if len(secret) < MIN_WEBHOOK_SECRET_CHARS:
        raise PermanentError(
            f"the connection's webhook secret is shorter than {MIN_WEBHOOK_SECRET_CHARS}"
            " characters: register a longer one (conveyor crm connect); nothing applied"
        )
    given = hook.signature.strip().removeprefix("sha256=").lower()
    expected = signature_of(secret, hook.connection_id, hook.event_id, hook.timestamp, hook.body)
    if not given or not hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace")):
        raise PermanentError("webhook signature is missing or wrong: nothing applied")
    age_s = (time.time() if now is None else now) - hook.timestamp
    if age_s > max_age_s:
        raise PermanentError(
            f"webhook delivery is {age_s:.0f} s old, past crm.webhook_max_age_s"
            f" ({max_age_s:g} s): refused as a possible replay; nothing applied"
        )
    if age_s < -MAX_FUTURE_S:
        raise PermanentError(
            f"webhook delivery is dated {-age_s:.0f} s in the future: nothing applied"
        )


def check_account(target: WebhookTarget, delivery: Delivery) -> None:
    """The delivery names the connection's account."""
    named = delivery.account.get("subdomain")
    if target.account_subdomain is None:
        raise PermanentError(
            "the connection has no account subdomain to check deliveries against: register it"
            " again with --account-subdomain; nothing applied"
        )
    if not isinstance(named, str) or named.strip().lower() != target.account_subdomain:
        raise PermanentError(
            f"webhook delivery names account {named!r}, not the connection's"
            f" {target.account_subdomain!r}: nothing applied"
        )


async def handle(job: Job[CrmWebhook], deps: Deps) -> Outcome:
    crm = require(deps.crm)
    hook = job.payload
    async with deps.db.acquire() as conn:
        try:
            target = await connections.webhook_target(conn, crm.keyring, hook.connection_id)
        except DecryptError as exc:
            raise PermanentError(str(exc)) from None
    connections.check_organization(hook.connection_id, target.organization_id, job.organization_id)
    verify(target.secret, hook, crm.policy.webhook_max_age_s)
    delivery = parse_delivery(hook.body)
    check_account(target, delivery)
    if delivery.nul_removed:
        log.warning(
            "crm.webhook_nul_removed",
            connection_id=hook.connection_id,
            removed=delivery.nul_removed,
            reason="NUL (%00) in the delivery's keys or values; Postgres cannot store it",
        )
    delivered_at = datetime.fromtimestamp(hook.timestamp, UTC)
    async with deps.db.acquire() as conn, conn.transaction():
        stored = await conn.fetchval(
            STORE,
            hook.connection_id,
            hook.event_id,
            job.id,
            hook.body,
            json.dumps([_summary(e) for e in delivery.events]),
            delivery.unknown_kinds,
        )
        if stored is None:
            log.info("crm.webhook_duplicate", connection_id=hook.connection_id)
            return Outcome.SKIPPED
        result = await apply(conn, hook.connection_id, hook.event_id, delivery, delivered_at)
        await conn.execute(RECORD, stored, result.applied, result.stale)
    _report(hook.connection_id, delivery, result)
    return Outcome.SUCCEEDED


async def apply(
    conn: DbConnection,
    connection_id: str,
    event_id: str,
    delivery: Delivery,
    delivered_at: datetime,
) -> Applied:
    """Apply the lead and contact events in order; count those older than what we hold.

    ``delivered_at``: the delivery's signed time, which dates a delete that
    carries no time of Kommo's.
    """
    applied = stale = 0
    for event in delivery.events:
        if not isinstance(event, EntityEvent):
            continue
        if await _apply_one(conn, connection_id, event_id, event, delivered_at):
            applied += 1
        else:
            stale += 1
    return Applied(applied, stale)


async def _apply_one(
    conn: DbConnection, connection_id: str, event_id: str, e: EntityEvent, delivered_at: datetime
) -> bool:
    data = json.dumps(e.data, sort_keys=True)
    if e.action == "delete":
        sql, when = TOMBSTONES[e.entity], e.updated_at or delivered_at
        return await conn.fetchval(sql, connection_id, e.id, when, data, event_id) is not None
    when = e.updated_at or UNTIMED
    if e.entity == "leads":
        args: tuple[Any, ...] = (e.name, e.status_id, e.pipeline_id, e.price, e.responsible_user_id)
        row = await conn.fetchval(UPSERT_LEAD, connection_id, e.id, *args, when, data, event_id)
    else:
        args = (e.name, e.responsible_user_id)
        row = await conn.fetchval(UPSERT_CONTACT, connection_id, e.id, *args, when, data, event_id)
    return row is not None


def _summary(event: Event) -> dict[str, Any]:
    if isinstance(event, UnknownEvent):
        return {"kind": event.kind}
    found = {k: v for k, v in asdict(event).items() if k != "data" and v is not None}
    return {"kind": event.kind} | {
        k: str(v) if isinstance(v, datetime) else v for k, v in found.items()
    }


def _report(connection_id: str, delivery: Delivery, result: Applied) -> None:
    kinds: dict[str, int] = {}
    for event in delivery.events:
        kinds[event.kind] = kinds.get(event.kind, 0) + 1
    log.info(
        "crm.webhook_applied",
        connection_id=connection_id,
        kinds=kinds,
        applied=result.applied,
        stale=result.stale,
    )
    if delivery.unknown_kinds:
        log.warning(
            "crm.webhook_unknown_kinds",
            connection_id=connection_id,
            unknown_kinds=delivery.unknown_kinds,
        )
