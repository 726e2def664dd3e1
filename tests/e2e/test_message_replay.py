"""A refused message is dead-lettered with Kommo's reason; `conveyor dlq replay` sends it once.

Through the real worker and the real command (issue 13): a message to a lead
Kommo does not have is refused (HTTP 400, "Entity not found") — a permanent
failure, dead-lettered at once with Kommo's reason, nothing sent. Replayed
while the lead is still missing, it is refused again (a second dead letter,
still nothing sent). Once the lead exists, a replay sends it: one note. Both
dead letters replayed again: the job runs once more (the two rows are one
job) and is skipped by the send ledger — no second POST, still one note.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import asyncpg
import pytest

from streams.commands.cli import main
from tests.support.crm import register_account
from tests.support.dlq import dlq_rows, wait_dlq
from tests.support.kommo_server import KommoServer, kommo_server
from tests.support.messages import ledger, message_envelopes, publish_messages, worker_env
from tests.support.stack import Stack, patched_env
from tests.support.waiting import eventually
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.e2e

POST = "POST /api/v4/leads/notes"


async def conveyor(stack: Stack, *argv: str) -> int:
    """The `conveyor` command, in a thread (it runs its own event loop)."""

    def run() -> int:
        with patched_env(stack.env):
            return main(list(argv))

    return await asyncio.to_thread(run)


async def waits_for(worker: WorkerProcess, event: str, key: str, n: int = 1) -> None:
    def seen() -> None:
        def matches(e: dict[str, Any]) -> bool:
            return e.get("event") == event and e.get("idempotency_key") == key

        worker.wait_for(lambda e: matches(e) and sum(map(matches, worker.events)) >= n, 60)

    await asyncio.to_thread(seen)


@pytest.fixture
async def server() -> Any:
    async with kommo_server(rate_limit=None) as srv:
        yield srv


async def test_a_refused_message_is_dead_lettered_and_a_replay_sends_it_at_most_once(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any, server: KommoServer
) -> None:
    connection = await register_account(db, server)
    missing = server.next_id()  # a lead Kommo does not have (deleted, say)
    [envelope] = message_envelopes(connection.id, [missing], 1)
    key = str(envelope.payload["idempotency_key"])
    worker: WorkerProcess = worker_factory(stack, **worker_env())
    await asyncio.to_thread(worker.wait_ready)

    publish_messages(stack, [envelope])
    [first] = await wait_dlq(db, stack, 1)
    assert (first["job_id"], first["stage"], first["attempts"]) == (envelope.id, "handle", 1)
    assert first["error_class"] == "PermanentError"
    assert "HTTP 400" in first["error_message"] and "Entity not found" in first["error_message"]
    refused = await ledger(db, key)
    assert refused["state"] == "failed" and "Entity not found" in refused["error"]
    assert server.calls[POST] == 1 and server.notes["leads"] == []

    # Replayed before the cause is fixed: refused again, a second dead letter.
    assert await conveyor(stack, "dlq", "replay", "--job-type", "message.send") == 0
    rows = await wait_dlq(db, stack, 2)
    second = rows[-1]
    assert second["job_id"] == envelope.id and "Entity not found" in second["error_message"]
    assert server.calls[POST] == 2 and server.notes["leads"] == []

    # The lead is back; the operator replays: sent once.
    server.add_lead(missing)
    assert await conveyor(stack, "dlq", "replay", "--all") == 0
    await waits_for(worker, "message.sent", key)
    assert (await ledger(db, key))["state"] == "sent"
    assert server.calls[POST] == 3 and len(server.notes_of("leads", missing)) == 1

    # Both dead letters again: one job, replayed once, skipped without a request.
    ids = [str(r["id"]) for r in rows]
    replay_all = ["--id", ids[0], "--id", ids[1], "--include-replayed"]
    assert await conveyor(stack, "dlq", "replay", *replay_all) == 0
    await waits_for(worker, "message.skipped", key)
    statuses = await eventually(
        lambda: dlq_rows(db, stack),
        lambda now: [r["status"] for r in now] == ["replayed", "resolved"],
        what="the duplicate row resolved",
    )
    assert [r["replay_count"] for r in statuses] == [2, 1]
    assert server.calls[POST] == 3 and len(server.notes_of("leads", missing)) == 1
    assert len(await dlq_rows(db, stack)) == 2, "nothing dead-lettered by the last replay"
    worker.signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait_exit, 40) == 0
