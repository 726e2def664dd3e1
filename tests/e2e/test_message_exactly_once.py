"""message.send through the real worker: 500 messages, two SIGKILLs, lost answers → 500 notes.

Issue 13's proof, end to end: the worker runs as a subprocess against the
real Kafka and Postgres and a local Kommo account (tests/support/kommo_server.py)
that creates the note but answers after the client's timeout on 5 % of POSTs
("late") and answers 500 without creating it on another 5 %. 500
``message.send`` jobs over 50 leads are published keyed by lead; the worker
is SIGKILLed when a third and when two thirds of the notes exist, and
started again each time. At the end Kommo holds exactly 500 notes, one per
idempotency key, in publish order per lead; then every job is published
again (as a replay would) and nothing more is posted.

Leases, settle time and the client's timeout are short (``worker_env``) so
the run takes about a minute; the figures line (-s) is recorded in
docs/RELIABILITY.md. ``CONVEYOR_MESSAGE_E2E_SEED`` picks the faults.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from collections import Counter
from typing import Any

import asyncpg
import pytest

from tests.support.crm import register_account
from tests.support.kafka import committed_and_end
from tests.support.kommo_server import Fault, KommoServer, kommo_server
from tests.support.messages import (
    ledger_figures,
    message_envelopes,
    notes_per_key,
    out_of_order,
    publish_messages,
    sent_today,
    worker_env,
)
from tests.support.stack import Stack
from tests.support.waiting import eventually
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.e2e

SEED = int(os.environ.get("CONVEYOR_MESSAGE_E2E_SEED", "13"))
MESSAGES, LEADS = 500, 50
POST = "POST /api/v4/leads/notes"
CLIENT_TIMEOUT_S = 0.5
ENV = {
    **worker_env(lease_s=3.0, settle_s=1.0, timeout_s=CLIENT_TIMEOUT_S),
    # The fake account has no rate limit here; the client's own pacing
    # (7 requests/s, Kommo's) would make this a 2-minute wait, not a test.
    "CONVEYOR_CRM__REQUESTS_PER_SECOND": "200",
    "CONVEYOR_KAFKA__SESSION_TIMEOUT_S": "6",  # a killed worker leaves the group sooner
}


async def notes_made(server: KommoServer) -> int:
    return len(server.notes["leads"])


async def until_notes(server: KommoServer, n: int, what: str, timeout_s: float = 120) -> None:
    await eventually(lambda: notes_made(server), lambda made: made >= n, timeout_s, what)


async def start(worker_factory: Any, stack: Stack) -> WorkerProcess:
    worker: WorkerProcess = worker_factory(stack, **ENV)
    await asyncio.to_thread(worker.wait_ready, 120)
    return worker


async def kill(worker: WorkerProcess) -> None:
    worker.signal(signal.SIGKILL)
    assert await asyncio.to_thread(worker.wait_exit, 10) == -signal.SIGKILL


async def all_committed(stack: Stack) -> dict[int, tuple[int, int]]:
    topic = stack.registry().topic_for("message.send")
    return await asyncio.to_thread(
        committed_and_end, stack.bootstrap, f"{stack.prefix}-group", topic
    )


def consumed(offsets: dict[int, tuple[int, int]]) -> bool:
    return all(committed == end for committed, end in offsets.values())


def count(workers: list[WorkerProcess], event: str) -> int:
    """Log lines called ``event`` of every worker so far."""
    return sum(worker.count(event) for worker in workers)


@pytest.fixture
async def server() -> Any:
    async with kommo_server(rate_limit=None, seed=SEED) as srv:
        srv.chaos = [
            (0.05, Fault("late", delay_s=2 * CLIENT_TIMEOUT_S, route=POST)),
            (0.05 / 0.95, Fault.answer(500, POST)),  # 5 % of all POSTs
        ]
        yield srv


async def test_five_hundred_messages_through_two_sigkills_make_five_hundred_notes_in_order(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any, server: KommoServer
) -> None:
    org = f"org-e2e-{SEED}-{time.time_ns()}"
    connection = await register_account(db, server, organization_id=org)
    leads = [server.add_lead()["id"] for _ in range(LEADS)]
    envelopes = message_envelopes(connection.id, leads, MESSAGES, organization_id=org, seed=SEED)
    keys = [str(e.payload["idempotency_key"]) for e in envelopes]

    workers = [await start(worker_factory, stack)]
    started = time.monotonic()
    await asyncio.to_thread(publish_messages, stack, envelopes)
    for share in (1 / 3, 2 / 3):
        await until_notes(server, int(MESSAGES * share), f"{share:.0%} of the notes")
        await kill(workers[-1])
        workers.append(await start(worker_factory, stack))
    await until_notes(server, MESSAGES, "a note for every message")
    await eventually(
        lambda: ledger_figures(db, keys), lambda f: f["sent"] == MESSAGES, 60, "all sent"
    )
    await eventually(lambda: all_committed(stack), consumed, 60, "every job committed")
    elapsed_s = time.monotonic() - started

    assert notes_per_key(server, keys) == Counter({key: 1 for key in keys})
    assert out_of_order(server, envelopes) == [], "a lead's notes out of publish order"
    assert await sent_today(db, org) == MESSAGES, "each message counted once"
    figures = await ledger_figures(db, keys)
    posts, lookups = server.calls[POST], figures["lookups"]

    # The replay: every job again, same ids and keys. Nothing is posted.
    skipped = count(workers, "message.skipped")  # sent before a kill, redelivered after it
    await asyncio.to_thread(publish_messages, stack, envelopes)
    await eventually(lambda: all_committed(stack), consumed, 60, "the replay committed")
    replay_skipped = count(workers, "message.skipped") - skipped
    assert server.calls[POST] == posts, "the replay posted"
    assert notes_per_key(server, keys) == Counter({key: 1 for key in keys})
    assert replay_skipped == MESSAGES
    assert (await ledger_figures(db, keys))["lookups"] == lookups, "sent keys are not looked up"
    await asyncio.to_thread(workers[-1].stop)

    retried = count(workers, "job.retrying")
    delays = sorted(figures["delays_s"])
    print(
        f"\n[message-e2e] seed={SEED} messages={MESSAGES} leads={LEADS} kills=2 "
        f"notes={sum(notes_per_key(server, keys).values())} sent={figures['sent']} "
        f"sent_by_answer={figures['by_answer']} sent_by_lookup={figures['by_lookup']} "
        f"looked_up_messages={figures['looked_up']} lookups={lookups} "
        f"posted_twice={figures['posted_twice']} posts={posts} "
        f"skipped_after_kills={skipped} retried={retried} "
        f"delay_p50_s={statistics.median(delays):.2f} "
        f"delay_p99_s={delays[int(0.99 * (len(delays) - 1))]:.2f} "
        f"delay_max_s={delays[-1]:.2f} elapsed_s={elapsed_s:.1f} "
        f"replay_skipped={replay_skipped} replay_posts={server.calls[POST] - posts}"
    )
