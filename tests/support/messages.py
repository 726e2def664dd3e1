"""Helpers for message.send tests: jobs keyed by lead, a runner stand-in, what Kommo holds."""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from confluent_kafka import Producer

from handlers.errors import RetryableError
from handlers.messaging.message import marker_of
from handlers.types import Outcome
from schemas.envelope import JobEnvelope
from schemas.jobs import MessageSend
from tests.support.crm import KEYRING_TEXT
from tests.support.kommo_server import KommoServer
from tests.support.stack import Stack
from tests.support.waiting import eventually

MARKER = re.compile(r"\[conveyor:[0-9a-f]{20}\]")


def message(
    connection_id: str,
    lead_id: int,
    key: str | None = None,
    *,
    text: str | None = None,
    channel: str = "note",
) -> MessageSend:
    key = key or f"msg-{uuid.uuid4().hex}"
    return MessageSend(
        connection_id=connection_id,
        lead_id=lead_id,
        channel=channel,
        text=text or f"Hello from {key}",
        idempotency_key=key,
    )


def message_envelopes(
    connection_id: str,
    leads: list[int],
    count: int,
    *,
    organization_id: str = "org-1",
    seed: int = 13,
) -> list[JobEnvelope]:
    """``count`` message.send jobs spread over ``leads`` at random (seeded), each its own key.

    Their order is the publish order; per lead it is the order Kommo must show.
    """
    rnd = random.Random(seed)
    run = uuid.uuid4().hex[:8]
    envelopes = []
    for i in range(count):
        lead = rnd.choice(leads)
        payload = message(connection_id, lead, f"m-{run}-{i:05d}", text=f"message {i} to {lead}")
        envelopes.append(
            JobEnvelope(
                id=f"job-{run}-{i:05d}",
                type="message.send",
                organization_id=organization_id,
                payload=payload.model_dump(mode="json"),
            )
        )
    return envelopes


def worker_env(
    *, lease_s: float = 3.0, settle_s: float = 1.0, timeout_s: float = 0.5
) -> dict[str, str]:
    """Settings for a worker subprocess that sends messages to a local Kommo account.

    The keyring is this process's (so it decrypts what ``register_account``
    stored); the runner's timeout covers a lookup and a POST, each within a
    lease, and retries wait in place up to a lease plus the settle time, so
    a lead's messages keep their order while one of them is being resolved.
    """
    return {
        "CONVEYOR_CRM__KEYRING": KEYRING_TEXT,
        "CONVEYOR_CRM__TIMEOUT_S": str(timeout_s),
        "CONVEYOR_CRM__MESSAGE_LEASE_S": str(lease_s),
        "CONVEYOR_CRM__MESSAGE_SETTLE_S": str(settle_s),
        "CONVEYOR_CRM__BACKOFF_BASE_S": "0.05",
        "CONVEYOR_JOBS__MESSAGE_SEND__TIMEOUT_S": str(3 * lease_s),
        "CONVEYOR_JOBS__MESSAGE_SEND__MAX_ATTEMPTS": "50",
        "CONVEYOR_JOBS__MESSAGE_SEND__IN_PLACE_MAX_S": str(lease_s + settle_s + 1.0),
    }


def lead_key(envelope: JobEnvelope) -> bytes:
    """The Kafka key of a message.send job: its lead, so a lead's messages keep their order."""
    return str(envelope.payload["lead_id"]).encode()


def publish_messages(stack: Stack, envelopes: list[JobEnvelope]) -> None:
    """Publish message.send jobs keyed by lead (for the e2e test and the demo)."""
    prod: Producer = stack.producer()
    topic = stack.registry().topic_for("message.send")
    for envelope in envelopes:
        prod.produce(topic, envelope.to_bytes(), lead_key(envelope))
    assert prod.flush(30) == 0, "Kafka did not acknowledge every message.send job"


@dataclass
class Tally:
    """How the runs of a set of jobs ended (a job may be run many times)."""

    outcomes: Counter[str]
    retries: int = 0


async def until_done(
    run: Callable[[], Awaitable[Outcome]],
    *,
    tally: Tally | None = None,
    max_runs: int = 50,
    max_delay_s: float = 5.0,
) -> Outcome:
    """Run a job as the runner would: again after each RetryableError, after its delay."""
    for _ in range(max_runs):
        try:
            outcome = await run()
        except RetryableError as retry:
            if tally is not None:
                tally.retries += 1
            await asyncio.sleep(min(max_delay_s, retry.delay_s if retry.delay_s else 0.05))
            continue
        if tally is not None:
            tally.outcomes[outcome.value] += 1
        return outcome
    raise AssertionError(f"still retrying after {max_runs} runs")


def markers_on(server: KommoServer, lead_id: int) -> list[str]:
    """The markers of the lead's notes, oldest first (a note without one: '')."""
    found = []
    for note in sorted(server.notes_of("leads", lead_id), key=lambda n: n["id"]):
        match = MARKER.search(str((note.get("params") or {}).get("text", "")))
        found.append(match.group(0) if match else "")
    return found


def notes_per_key(server: KommoServer, keys: list[str]) -> Counter[str]:
    """How many notes Kommo holds for each key (0 for none)."""
    by_marker = Counter(
        m
        for lead in {n["entity_id"] for n in server.notes["leads"]}
        for m in markers_on(server, lead)
    )
    return Counter({key: by_marker[marker_of(key)] for key in keys})


def out_of_order(server: KommoServer, envelopes: list[JobEnvelope]) -> list[int]:
    """Leads whose notes are not exactly one per job, in publish order ([] is right)."""
    expected: dict[int, list[str]] = {}
    for envelope in envelopes:
        lead = int(envelope.payload["lead_id"])
        expected.setdefault(lead, []).append(marker_of(envelope.payload["idempotency_key"]))
    return [lead for lead, markers in expected.items() if markers_on(server, lead) != markers]


async def wait_for_notes(
    server: KommoServer, keys: list[str], timeout_s: float = 300.0
) -> Counter[str]:
    """Wait until Kommo holds a note for every key; how many it holds per key."""

    async def count() -> Counter[str]:
        return notes_per_key(server, keys)

    return await eventually(
        count,
        lambda c: all(c[k] for k in keys),
        timeout_s=timeout_s,
        what=f"a note for each of {len(keys)} keys",
    )


async def ledger(db: asyncpg.Pool, key: str) -> asyncpg.Record:
    async with db.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM message_sends WHERE idempotency_key = $1", key)
    assert row is not None, f"no ledger row for {key}"
    return row


async def ledger_figures(db: asyncpg.Pool, keys: list[str]) -> dict[str, Any]:
    """How the ledger rows of ``keys`` got to ``sent``; each delay from first claim to sent."""
    row = await db.fetchrow(
        """
        SELECT count(*) FILTER (WHERE state = 'sent') AS sent,
               count(*) FILTER (WHERE resolved_by = 'answer') AS by_answer,
               count(*) FILTER (WHERE resolved_by = 'lookup') AS by_lookup,
               count(*) FILTER (WHERE lookups > 0) AS looked_up,
               coalesce(sum(lookups), 0) AS lookups,
               count(*) FILTER (WHERE posts > 1) AS posted_twice,
               array_agg(extract(epoch FROM sent_at - created_at)::float8) AS delays_s
        FROM message_sends WHERE idempotency_key = ANY($1)
        """,
        keys,
    )
    assert row is not None
    return dict(row)


async def sent_today(db: asyncpg.Pool, organization_id: str) -> int:
    """The organization's usage count for today (UTC, the database's clock)."""
    async with db.acquire() as conn:
        value = await conn.fetchval(
            "SELECT sent FROM message_usage WHERE organization_id = $1"
            " AND day = (now() AT TIME ZONE 'UTC')::date",
            organization_id,
        )
    return int(value or 0)
