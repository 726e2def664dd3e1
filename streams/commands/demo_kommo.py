"""The CRM part of ``conveyor demo``, and the stand-in Kommo account it syncs.

The demo registers a connection (``demo-kommo``) to a stand-in account served
on a loopback port, publishes a ``crm.sync_pipelines`` job and two
``crm.webhook`` jobs — one signed with the connection's webhook secret, one
unsigned — and prints what the worker did with each: the sync's counts, the
signed delivery applied (its lead stored), the unsigned one dead-lettered
with its reason and nothing applied. The worker must run with the same
``crm.keyring`` (``make run`` and ``make demo`` share a dev key).

The stand-in speaks just what a pipeline sync reads of

Kommo's API v4 (docs/KOMMO.md): ``GET /api/v4/leads/pipelines``
(every pipeline with its statuses embedded, the system statuses 142 and 143
last) and ``GET /api/v4/{leads,contacts,companies}/custom_fields`` paged with
``page``/``limit`` and ``_links.next``, 204 for an empty list, errors as
``application/problem+json``, a bearer token required. Served on a loopback
port for the length of the demo; the tests use the fuller fake in
tests/support/kommo_server.py, which is not shipped.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import asyncpg
from aiohttp import web
from rich.console import Console
from rich.table import Table

from handlers.crm import connections
from handlers.crm.connections import NewConnection
from handlers.crm.crypto import Keyring
from handlers.crm.webhook import signature_of
from schemas.envelope import JobEnvelope
from streams.commands.crm import describe_sync, publish_sync, wait_for_sync
from streams.commands.postgres import database
from streams.commands.submit import producer, publish
from streams.registry import build_registry
from streams.settings import Settings

PIPELINES = (("Sales", ("Incoming", "Qualified", "Proposal")), ("Partners", ("New", "Signed")))
FIELDS = {"leads": ("Budget", "Source", "Region"), "contacts": ("Phone", "Email"), "companies": ()}
PAGE = 2  # a small page, so the demo's sync follows a next link
out = Console(highlight=False, soft_wrap=True)


@dataclass
class DemoKommo:
    """The account: its token, and how many requests it answered."""

    access_token: str = field(default_factory=lambda: f"demo-at-{secrets.token_hex(8)}")
    base_url: str = ""
    requests: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if request.headers.get("Authorization") != f"Bearer {self.access_token}":
            return _problem(401, "Unauthorized")
        parts = request.path.strip("/").split("/")
        if parts == ["api", "v4", "leads", "pipelines"]:
            return web.json_response({"_embedded": {"pipelines": pipelines()}})
        if len(parts) == 4 and parts[3] == "custom_fields" and parts[2] in FIELDS:
            return self._page(request, custom_fields(parts[2]))
        return _problem(404, "Not found")

    def _page(self, request: web.Request, items: list[dict[str, Any]]) -> web.Response:
        page = int(request.query.get("page", "1"))
        limit = min(PAGE, int(request.query.get("limit", str(PAGE))))
        chunk = items[(page - 1) * limit : page * limit]
        if not chunk:
            return web.Response(status=204)
        links: dict[str, Any] = {}
        if page * limit < len(items):
            links["next"] = {"href": f"{self.base_url}{request.path}?page={page + 1}&limit={limit}"}
        return web.json_response(
            {"_page": page, "_links": links, "_embedded": {"custom_fields": chunk}}
        )


def pipelines() -> list[dict[str, Any]]:
    found = []
    for p, (name, stages) in enumerate(PIPELINES):
        pipeline_id = 8_000_000 + p
        statuses = [
            {"id": pipeline_id * 10 + s, "name": stage, "sort": 10 * (s + 1), "type": int(s == 0)}
            for s, stage in enumerate(stages)
        ]
        statuses += [
            {"id": 142, "name": "Closed - won", "sort": 10_000, "type": 0},
            {"id": 143, "name": "Closed - lost", "sort": 11_000, "type": 0},
        ]
        found.append(
            {
                "id": pipeline_id,
                "name": name,
                "sort": p + 1,
                "is_main": p == 0,
                "_embedded": {"statuses": [s | {"pipeline_id": pipeline_id} for s in statuses]},
            }
        )
    return found


def custom_fields(entity: str) -> list[dict[str, Any]]:
    return [
        {"id": 900_000 + 100 * i + len(entity), "name": name, "type": "text", "sort": i}
        for i, name in enumerate(FIELDS[entity])
    ]


def _problem(status: int, detail: str) -> web.Response:
    body = {"title": detail, "type": f"https://httpstatus.es/{status}", "status": status}
    return web.json_response(body, status=status, content_type="application/problem+json")


@asynccontextmanager
async def serve_loopback(app: web.Application) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port) while the block runs; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def demo_kommo() -> AsyncIterator[DemoKommo]:
    """The stand-in account, served while the block runs."""
    account = DemoKommo()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", account.handle)
    async with serve_loopback(app) as base_url:
        account.base_url = base_url
        yield account


# --- the demo's CRM part -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hook:
    """One webhook delivery the demo publishes, and what should become of it."""

    label: str
    job_id: str
    event_id: str
    lead_id: int
    signed: bool


async def run_crm_demo(settings: Settings, timeout_s: float) -> bool:
    """Sync the stand-in account and apply two webhooks through the worker; print each."""
    if settings.crm.keyring is None:
        out.print(
            "[yellow]CRM part skipped: crm.keyring is not set. `make run` and `make demo` set "
            "a dev key; with `conveyor demo`, give it and the worker the same "
            "CONVEYOR_CRM__KEYRING.[/]"
        )
        return True
    keyring = Keyring.parse(settings.crm.keyring.get_secret_value())
    webhook_secret = secrets.token_hex(16)
    async with demo_kommo() as account, database(settings) as conn:
        await connections.register(conn, keyring, _connection(account, webhook_secret))
        job_id = publish_sync(settings, CONNECTION, ORGANIZATION)
        out.print(
            f"published crm.sync_pipelines for {CONNECTION} (a stand-in Kommo at "
            f"{account.base_url}); waiting for the worker..."
        )
        synced = await wait_for_sync(conn, CONNECTION, job_id, timeout_s)
        out.print(describe_sync(CONNECTION, synced), markup=False)
        hooks = _publish_webhooks(settings, webhook_secret)
        outcomes = [await _outcome(conn, hook, timeout_s) for hook in hooks]
    table = Table("webhook", "lead", "what happened")
    for hook, (_, said) in zip(hooks, outcomes, strict=True):
        table.add_row(hook.label, str(hook.lead_id), said)
    out.print(table)
    return synced.state == "succeeded" and all(ok for ok, _ in outcomes)


CONNECTION = "demo-kommo"
ORGANIZATION = "demo-org"
ACCOUNT = "demo"  # the stand-in's subdomain: its deliveries name it
SIGNED_LEAD, UNSIGNED_LEAD = 1001, 1002


def _connection(account: DemoKommo, webhook_secret: str) -> NewConnection:
    return NewConnection(
        id=CONNECTION,
        organization_id=ORGANIZATION,
        base_url=account.base_url,
        client_id="demo-client",
        client_secret=secrets.token_hex(16),
        redirect_uri="http://127.0.0.1/demo/callback",
        access_token=account.access_token,
        refresh_token=f"demo-rt-{secrets.token_hex(8)}",
        access_expires_at=datetime.now(UTC) + timedelta(days=1),
        webhook_secret=webhook_secret,
        account_subdomain=ACCOUNT,
    )


def _publish_webhooks(settings: Settings, webhook_secret: str) -> list[Hook]:
    """A signed and an unsigned delivery, as the platform's edge publishes them."""
    spec = build_registry(settings).specs["crm.webhook"]
    run = secrets.token_hex(4)
    prod = producer(settings)
    hooks = []
    for lead_id, signed in ((SIGNED_LEAD, True), (UNSIGNED_LEAD, False)):
        body = _delivery(lead_id)
        hook = Hook(
            "signed" if signed else "unsigned",
            f"demo-webhook-{run}-{lead_id}",
            f"demo-{run}-{lead_id}",
            lead_id,
            signed,
        )
        now = int(time.time())
        signature = signature_of(webhook_secret, CONNECTION, hook.event_id, now, body)
        payload = {
            "connection_id": CONNECTION,
            "event_id": hook.event_id,
            "timestamp": now,
            "signature": signature if signed else "sha256=",
            "body": body,
        }
        envelope = JobEnvelope(
            id=hook.job_id, type=spec.job_type, organization_id=ORGANIZATION, payload=payload
        )
        publish(prod, spec.topic, envelope, CONNECTION.encode())
        hooks.append(hook)
    if prod.flush(30):
        raise OSError("Kafka did not acknowledge the webhook jobs within 30 s")
    out.print("published a signed and an unsigned crm.webhook job; waiting for the worker...")
    return hooks


def _delivery(lead_id: int) -> str:
    """Kommo's form-encoded body: a lead moved to the Sales pipeline's second stage."""
    pipeline = pipelines()[0]
    status = pipeline["_embedded"]["statuses"][1]
    fields = {
        "id": lead_id,
        "name": f"Demo lead {lead_id}",
        "status_id": status["id"],
        "old_status_id": pipeline["_embedded"]["statuses"][0]["id"],
        "pipeline_id": pipeline["id"],
        "price": 1200,
        "last_modified": int(time.time()),
    }
    pairs = [(f"leads[status][0][{k}]", str(v)) for k, v in fields.items()]
    return urlencode([*pairs, ("account[subdomain]", ACCOUNT), ("account[id]", "1")])


async def _outcome(conn: asyncpg.Connection, hook: Hook, timeout_s: float) -> tuple[bool, str]:
    """Wait until the worker applied the delivery or dead-lettered it; (as expected, what)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        lead = await conn.fetchrow(LEAD, CONNECTION, hook.lead_id, hook.event_id)
        dead = await conn.fetchrow(DEAD_LETTER, hook.job_id)
        if lead is not None:
            said = f"applied: lead stored in {lead['status']} ({lead['pipeline']})"
            return hook.signed, said
        if dead is not None:
            said = (
                f"dead-lettered at stage {dead['stage']}: {dead['error_message']}"
                f" (dead letter {dead['id']})"
            )
            return not hook.signed, said
        await asyncio.sleep(POLL_S)
    return False, "no outcome yet: is the worker running with the same crm.keyring?"


POLL_S = 0.5
LEAD = """
SELECT coalesce(s.name, l.status_id::text) AS status, coalesce(p.name, '?') AS pipeline
FROM crm_leads l
LEFT JOIN crm_pipeline_statuses s
  ON s.connection_id = l.connection_id AND s.pipeline_id = l.pipeline_id
 AND s.status_id = l.status_id
LEFT JOIN crm_pipelines p ON p.connection_id = l.connection_id AND p.pipeline_id = l.pipeline_id
WHERE l.connection_id = $1 AND l.lead_id = $2 AND l.event_id = $3
"""
DEAD_LETTER = "SELECT id, stage, error_message FROM worker_dlq WHERE job_id = $1"
