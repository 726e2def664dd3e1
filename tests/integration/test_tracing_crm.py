"""The traces of a ``message.send`` and a ``crm.webhook`` job: Postgres and Kommo spans.

Each job runs through the real runner against the real Postgres (the pool made
as the worker makes it, each query a span) and a local Kommo account; spans go
to memory. The message's text, the webhook's body and signature, the access
token and the connection's secrets appear in no span.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import aiohttp
import asyncpg
import pytest

from handlers.crm import webhook
from handlers.crm.services import CrmServices
from handlers.deps import Deps
from handlers.messaging import send
from schemas.envelope import JobEnvelope
from streams.publish import RecordPublisher
from streams.records import Record
from streams.registry import build_registry
from streams.runner import JobRunner
from streams.runtime import create_db_pool
from streams.settings import Settings
from tests.support.crm import (
    KEYRING_TEXT,
    crm_deps,
    delivery_body,
    register_account,
    services,
    signed_hook,
)
from tests.support.fakes import FakeCrashGuard, FakeRuntime, RecordingProducer
from tests.support.kommo_server import CLIENT_SECRET, KommoServer, kommo_server
from tests.support.messages import message
from tests.support.services import Endpoints
from tests.support.tracing import Traced, Tree, every_value, traced

pytestmark = pytest.mark.integration

REGISTRY = build_registry(Settings())
TEXT = "Dear Ann, your contract 88-ZX is ready"
SECRET = "whsec-" + uuid.uuid4().hex
TRACEPARENT = b"00-11111111111111111111111111111111-2222222222222222-01"


@dataclass
class Kit:
    traced: Traced
    db: asyncpg.Pool
    server: KommoServer
    deps: Deps
    connection_id: str
    access_token: str
    refresh_token: str

    async def run(self, job_type: str, payload: dict[str, object]) -> Tree:
        spec = REGISTRY.specs[job_type]
        handler = {"message.send": send.handle, "crm.webhook": webhook.handle}[job_type]
        producer = RecordingProducer()
        tracing = self.traced.tracing
        runner = JobRunner(
            replace(spec, handler=handler),
            FakeRuntime(self.deps),
            RecordPublisher(producer, group_id="g", dlq_topic="jobs.dlq", tracing=tracing),
            retry_topic=f"{spec.topic}.retry",
            max_job_bytes=1 << 20,
            guard=FakeCrashGuard(),
            tracing=tracing,
        )
        value = JobEnvelope(type=job_type, organization_id="org-1", payload=payload).to_bytes()
        headers = (("traceparent", TRACEPARENT),)
        await runner.run(Record(spec.topic, 0, 5, b"c-1", value, headers, None))
        assert producer.sent == [], "the job succeeded"
        await self.db.execute("SELECT 1")  # the last query's span is made on the next turn
        return self.traced.tree()


@pytest.fixture
async def kit(services: Endpoints) -> AsyncIterator[Kit]:
    settings = Settings(postgres={"dsn": services.dsn})
    with traced() as t:
        db = await create_db_pool(settings)  # as the runtime makes it: each query a span
        try:
            async with kommo_server(rate_limit=None) as server, aiohttp.ClientSession() as http:
                new = await register_account(db, server, webhook_secret=SECRET)
                deps = crm_deps(db, http, services_of(http))
                yield Kit(t, db, server, deps, new.id, new.access_token, new.refresh_token)
        finally:
            await db.close()


def services_of(http: aiohttp.ClientSession) -> CrmServices:
    return services(http, requests_per_second=500.0)


def secrets_of(kit: Kit) -> list[str]:
    return [
        kit.access_token,
        kit.refresh_token,
        SECRET,
        KEYRING_TEXT.split(":", 1)[1],
        CLIENT_SECRET,
    ]


async def test_a_message_send_trace_holds_its_queries_and_the_kommo_post(kit: Kit) -> None:
    lead = kit.server.add_lead()
    payload = message(kit.connection_id, lead["id"], text=TEXT).model_dump(mode="json")
    tree = await kit.run("message.send", payload)
    attempt = tree.one("process jobs.message.send")
    assert (attempt.attributes or {})["conveyor.job.outcome"] == "succeeded", str(tree)
    under = tree.names_under(attempt)
    assert "POST /api/v4/leads/notes" in under, str(tree)
    post = tree.one("POST /api/v4/leads/notes")
    assert tree.parent(post) is attempt
    assert (post.attributes or {})["http.response.status_code"] == 200
    queries = [s for s in tree.spans if (s.attributes or {}).get("db.system.name")]
    assert {tree.parent(q) for q in queries} == {attempt}, str(tree)
    operations = {(q.attributes or {})["db.operation.name"] for q in queries}
    assert {"SELECT", "INSERT", "UPDATE", "BEGIN", "COMMIT"} <= operations, operations
    shown = " ".join(every_value(tree.spans))
    for secret in [TEXT, "88-ZX", *secrets_of(kit)]:
        assert secret not in shown, secret


async def test_a_webhook_trace_holds_its_queries_and_no_part_of_the_delivery(kit: Kit) -> None:
    now = int(time.time())
    body = delivery_body(
        {"leads": {"add": [{"id": 77, "name": TEXT, "price": 9100, "date_create": now}]}}
    )
    hook = signed_hook(SECRET, kit.connection_id, body)
    tree = await kit.run("crm.webhook", hook.model_dump(mode="json"))
    attempt = tree.one("process jobs.crm.webhook")
    assert (attempt.attributes or {})["conveyor.job.outcome"] == "succeeded", str(tree)
    queries = [s for s in tree.spans if (s.attributes or {}).get("db.system.name")]
    assert queries and {tree.parent(q) for q in queries} == {attempt}, str(tree)
    texts = " ".join(str((q.attributes or {}).get("db.query.text")) for q in queries)
    assert "crm_webhook_events" in texts and "crm_leads" in texts
    shown = " ".join(every_value(tree.spans))
    for secret in [TEXT, "9100", hook.signature, hook.body, *secrets_of(kit)]:
        assert secret not in shown, secret
