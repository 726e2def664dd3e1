"""message.send under chaos, in process: 500 messages, one note each, in order per lead.

The real Postgres and a local Kommo account whose POSTs fail at random: 5 %
create the note and answer after the client's timeout ("late"), another 5 %
answer 500 without creating it, 2 % create it only after the client gave up
("deferred", within the settle time); 3 % of note lookups answer 500. Each of
50 leads is one lane that sends its messages in publish order (what the
runner's key ordering does); a run is cancelled at random mid-way (a worker
killed) and delivered again; a fifth of the messages get a second copy
delivered at once or a little later (a rebalance overlap, a republish).
Retries follow each RetryableError's delay, as the runner does. At the end
Kommo holds exactly one note per key, in publish order per lead; then every
job is delivered again (a replay) and nothing more is sent.

The figures line (``-s`` shows it) reports how the messages got there.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import asyncpg
import pytest

from handlers.deps import Deps
from handlers.errors import RetryableError
from handlers.messaging import send
from handlers.types import Job, Outcome
from schemas.jobs import MessageSend
from tests.support.crm import crm_deps, register_account, services
from tests.support.kommo_server import Fault, KommoServer, kommo_server
from tests.support.messages import (
    ledger_figures,
    message_envelopes,
    notes_per_key,
    out_of_order,
    sent_today,
)
from tests.support.services import Endpoints

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("CONVEYOR_MESSAGE_CHAOS_SEED", "5"))
MESSAGES, LEADS = 500, 50
KILL_P = 0.1  # a run is cancelled within KILL_WITHIN_S of its start
KILL_WITHIN_S = 0.05
DUPLICATE_P = 0.2
POST = "POST /api/v4/leads/notes"
LIST = "GET /api/v4/leads/{id}/notes"
POLICY = {"message_lease_s": 1.5, "message_settle_s": 0.5}
MAX_RUNS = 100


@dataclass
class Chaos:
    """Delivers jobs as a killed, rebalanced, retrying runner would, and counts."""

    deps: Deps
    rnd: random.Random
    outcomes: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    killed: int = 0
    delays_s: list[float] = field(default_factory=list)
    copies: list[asyncio.Task[None]] = field(default_factory=list)

    async def lane(self, jobs: list[Job[MessageSend]]) -> None:
        """One lead's messages, one after the other."""
        loop = asyncio.get_running_loop()
        for job in jobs:
            if self.rnd.random() < DUPLICATE_P:
                self.copies.append(asyncio.create_task(self.copy(job)))
            started = loop.time()
            await self.deliver(job)
            self.delays_s.append(loop.time() - started)

    async def copy(self, job: Job[MessageSend]) -> None:
        await asyncio.sleep(self.rnd.choice([0.0, self.rnd.uniform(0.0, 1.0)]))
        await self.deliver(job)

    async def deliver(self, job: Job[MessageSend], kills: bool = True) -> None:
        """Run ``job`` until it ends: again after a kill (redelivery) or a retryable error."""
        for _ in range(MAX_RUNS):
            run = asyncio.create_task(send.handle(job, self.deps))
            if kills and self.rnd.random() < KILL_P:
                await asyncio.wait({run}, timeout=self.rnd.uniform(0.0, KILL_WITHIN_S))
                run.cancel()
            try:
                outcome = await run
            except asyncio.CancelledError:
                if not run.cancelled():
                    raise
                self.killed += 1
                continue
            except RetryableError as retry:
                self.retries += 1
                await asyncio.sleep(min(3.0, retry.delay_s if retry.delay_s else 0.05))
                continue
            self.outcomes[outcome.value] += 1
            return
        raise AssertionError(f"{job.payload.idempotency_key} still not done after {MAX_RUNS} runs")


@pytest.fixture
async def pool(services: Endpoints) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(services.dsn, min_size=2, max_size=10) as created:
        yield created


@pytest.fixture
async def server() -> AsyncIterator[KommoServer]:
    async with kommo_server(rate_limit=None, seed=SEED) as srv:
        srv.chaos = [
            (0.05, Fault("late", delay_s=0.6, route=POST)),
            (0.05 / 0.95, Fault.answer(500, POST)),  # 5 % of all POSTs
            (0.02 / 0.90, Fault("deferred", delay_s=0.6, route=POST)),  # 2 %
            (0.03, Fault.answer(500, LIST)),
        ]
        yield srv


async def test_five_hundred_messages_under_chaos_make_five_hundred_notes_in_order(
    pool: asyncpg.Pool, server: KommoServer
) -> None:
    org = f"org-chaos-{SEED}-{time.time_ns()}"
    connection = await register_account(pool, server, organization_id=org)
    leads = [server.add_lead()["id"] for _ in range(LEADS)]
    envelopes = message_envelopes(connection.id, leads, MESSAGES, organization_id=org, seed=SEED)
    jobs = [Job(e.id, e.type, 1, org, MessageSend.model_validate(e.payload)) for e in envelopes]
    per_lead: dict[int, list[Job[MessageSend]]] = {lead: [] for lead in leads}
    for job in jobs:
        per_lead[job.payload.lead_id].append(job)
    keys = [j.payload.idempotency_key for j in jobs]

    async with aiohttp.ClientSession() as session:
        crm = services(session, policy=POLICY, timeout_s=0.3, requests_per_second=500.0)
        chaos = Chaos(crm_deps(pool, session, crm), random.Random(SEED))
        started = time.monotonic()
        await asyncio.gather(*(chaos.lane(lane) for lane in per_lead.values()))
        await asyncio.gather(*chaos.copies)
        elapsed_s = time.monotonic() - started

        assert notes_per_key(server, keys) == Counter({key: 1 for key in keys})
        assert out_of_order(server, envelopes) == []
        assert await sent_today(pool, org) == MESSAGES
        figures = await ledger_figures(pool, keys)
        assert figures["sent"] == MESSAGES

        posts_before = server.calls[POST]
        replay = Chaos(chaos.deps, random.Random(SEED + 1))
        await asyncio.gather(*(replay.deliver(j, kills=False) for j in jobs))
        assert replay.outcomes == Counter({Outcome.SKIPPED.value: MESSAGES})
        assert server.calls[POST] == posts_before
        assert notes_per_key(server, keys) == Counter({key: 1 for key in keys})

    delays = sorted(chaos.delays_s)
    print(
        f"\n[message-chaos] seed={SEED} messages={MESSAGES} leads={LEADS} "
        f"notes={sum(notes_per_key(server, keys).values())} "
        f"sent_by_answer={figures['by_answer']} sent_by_lookup={figures['by_lookup']} "
        f"looked_up_messages={figures['looked_up']} lookups={figures['lookups']} "
        f"posted_twice={figures['posted_twice']} posts={server.calls[POST]} "
        f"runs_succeeded={chaos.outcomes[Outcome.SUCCEEDED.value]} "
        f"runs_skipped={chaos.outcomes[Outcome.SKIPPED.value]} retried={chaos.retries} "
        f"killed={chaos.killed} copies={len(chaos.copies)} "
        f"delay_p50_s={statistics.median(delays):.2f} "
        f"delay_p99_s={delays[int(0.99 * (len(delays) - 1))]:.2f} "
        f"delay_max_s={delays[-1]:.2f} elapsed_s={elapsed_s:.1f} "
        f"replay_skipped={replay.outcomes[Outcome.SKIPPED.value]} replay_posts=0"
    )
