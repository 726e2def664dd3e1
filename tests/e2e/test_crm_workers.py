"""CRM jobs through Kafka and real worker processes, results in Postgres.

The Kommo account runs in this process (tests/support/kommo_server.py), so
every wait here yields to the event loop: a blocking wait would stop the
account from answering the workers.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import asyncpg
import pytest

from schemas.envelope import JobEnvelope
from tests.support.cli import conveyor
from tests.support.crm import KEYRING_TEXT, delivery_body, register_account, signed_hook
from tests.support.kommo_server import Fault, kommo_server, make_fields, make_pipelines
from tests.support.messages import message_envelopes, publish_messages, wait_for_notes
from tests.support.stack import Stack
from tests.support.waiting import eventually
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.e2e

TOKEN = "POST /oauth2/access_token"
SECRET = "whsec-e2e-0123456789abcdef0123456789"


async def _ready(stack: Stack, worker_factory: Any, count: int = 1) -> list[WorkerProcess]:
    stack.extra["CONVEYOR_CRM__KEYRING"] = KEYRING_TEXT  # what `make run` sets
    workers = [worker_factory(stack) for _ in range(count)]
    for worker in workers:
        await asyncio.to_thread(worker.wait_ready)
    return workers


def _webhook(connection_id: str, event_id: str, body: str, *, forged: bool = False) -> JobEnvelope:
    hook = signed_hook(SECRET, connection_id, body, event_id=event_id)
    if forged:
        hook = hook.model_copy(update={"signature": "sha256=" + "0" * 64})
    return JobEnvelope(
        id=f"job-{event_id}",
        type="crm.webhook",
        organization_id="org-1",
        payload=hook.model_dump(),
    )


def _publish_keyed(stack: Stack, connection_id: str, envelopes: list[JobEnvelope]) -> None:
    """Webhook jobs keyed by their connection, as the platform's edge publishes them."""
    producer = stack.producer()
    topic = stack.registry().topic_for("crm.webhook")
    for envelope in envelopes:
        producer.produce(topic, envelope.to_bytes(), connection_id.encode())
    assert producer.flush(30) == 0


async def test_sync_and_webhook_jobs_are_run_by_a_worker_into_postgres(
    stack: Stack, worker_factory: Any, db: asyncpg.Pool
) -> None:
    async with kommo_server() as server:
        server.pipelines = make_pipelines(3, 6)
        server.custom_fields["leads"] = make_fields("leads", 300, 500_000)  # two pages
        new = await register_account(db, server, webhook_secret=SECRET)
        (worker,) = await _ready(stack, worker_factory)

        env = {**stack.env, "CONVEYOR_CRM__KEYRING": KEYRING_TEXT}
        synced = await asyncio.to_thread(
            conveyor, "crm", "sync", new.id, "--wait", "60", env=env, timeout_s=90
        )
        assert synced.returncode == 0, synced.stdout + synced.stderr
        assert f"synced {new.id}: 3 pipelines, 18 statuses, 300 custom fields" in synced.stdout

        now = int(time.time())
        lead = {
            "id": 4242,
            "name": "From a webhook",
            "status_id": 7_000_000_00,
            "pipeline_id": 7_000_000,
        }
        added = delivery_body({"leads": {"add": [{**lead, "last_modified": now}]}})
        moved = delivery_body(
            {"leads": {"status": [{**lead, "status_id": 142, "last_modified": now + 10}]}}
        )
        hooks = [
            _webhook(new.id, "e2e-add", added),
            _webhook(new.id, "e2e-move", moved),
            _webhook(new.id, "e2e-add", added),  # redelivered
            _webhook(new.id, "e2e-forged", moved, forged=True),
        ]
        hooks[2] = hooks[2].model_copy(update={"id": "job-e2e-add-again"})
        _publish_keyed(stack, new.id, hooks)

        async def state() -> tuple[Any, ...]:
            async with db.acquire() as conn:
                stored = await conn.fetch(
                    "SELECT event_id FROM crm_webhook_events WHERE connection_id = $1", new.id
                )
                row = await conn.fetchrow(
                    "SELECT name, status_id, event_id FROM crm_leads"
                    " WHERE connection_id = $1 AND lead_id = 4242",
                    new.id,
                )
                dead = await conn.fetchrow(
                    "SELECT stage, error_message FROM worker_dlq WHERE job_id = 'job-e2e-forged'"
                )
            return sorted(r["event_id"] for r in stored), row, dead

        events, row, dead = await eventually(
            state, lambda s: s[2] is not None and len(s[0]) == 2, what="webhooks handled"
        )
    assert events == ["e2e-add", "e2e-move"]  # the redelivery stored once, the forged never
    assert row is not None and (row["name"], row["status_id"]) == ("From a webhook", 142)
    assert dead["stage"] == "handle" and "signature is missing or wrong" in dead["error_message"]
    async with db.acquire() as conn:
        pipelines = await conn.fetchval(
            "SELECT count(*) FROM crm_pipelines WHERE connection_id = $1", new.id
        )
    assert pipelines == 3
    await asyncio.to_thread(
        worker.wait_for, lambda e: e.get("event") == "crm.webhook_duplicate", 30
    )


async def test_forty_jobs_of_one_connection_on_two_workers_with_an_expired_token_refresh_once(
    stack: Stack, worker_factory: Any, db: asyncpg.Pool
) -> None:
    async with kommo_server(rate_limit=None) as server:
        new = await register_account(db, server, expires_in_s=-10)
        leads = [server.add_lead()["id"] for _ in range(40)]
        # The refresh takes a second: meanwhile every job of both workers needs a token.
        server.faults.append(Fault("slow", delay_s=1.0, route=TOKEN))
        workers = await _ready(stack, worker_factory, count=2)
        envelopes = message_envelopes(new.id, leads, 40)
        publish_messages(stack, envelopes)
        keys = [e.payload["idempotency_key"] for e in envelopes]
        notes = await wait_for_notes(server, keys, timeout_s=120)
    assert notes == Counter({key: 1 for key in keys})
    assert server.calls[TOKEN] == 1
    assert sum(w.count("crm.tokens_refreshed") for w in workers) == 1
    ran = [
        sum(
            1
            for e in w.events
            if e.get("event") == "job.succeeded" and e.get("job_type") == "message.send"
        )
        for w in workers
    ]
    assert sum(ran) == 40 and all(n > 0 for n in ran), ran  # both workers ran the connection's jobs
