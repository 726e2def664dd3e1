"""message.send against the real Postgres and a local Kommo account: each message once.

The handler is called directly, as the runner would call it; ``until_done``
stands in for the runner's retries (again after each RetryableError, after
its delay). Leases and settle times are shortened (``QUICK``) so that the
waits they impose take a second, not minutes.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest
from structlog.testing import capture_logs

from handlers.deps import Deps
from handlers.errors import Deferred, PermanentError, RetryableError
from handlers.messaging import send
from handlers.messaging.message import marker_of
from handlers.messaging.store import KeyReused
from handlers.types import Job, Outcome
from schemas.jobs import MessageSend
from tests.support.crm import crm_deps, register_account, services
from tests.support.kommo_server import Fault, KommoServer, kommo_server
from tests.support.messages import ledger, markers_on, message, sent_today, until_done
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

POST = "POST /api/v4/leads/notes"
LIST = "GET /api/v4/leads/{id}/notes"
LEAD = "GET /api/v4/leads/{id}"
QUICK = {"message_lease_s": 2.0, "message_settle_s": 0.5}
LIST_FAILS = [Fault.answer(500, LIST)] * 4  # the client's first try and its 3 retries


@dataclass
class Kit:
    db: asyncpg.Pool
    server: KommoServer
    session: aiohttp.ClientSession
    connection_id: str
    organization_id: str
    lead_id: int
    run: str = ""

    def key(self, name: str) -> str:
        """Keys are unique per test: the ledger is shared by the whole session."""
        return f"{name}-{self.run}"

    async def ledger(self, name: str) -> asyncpg.Record:
        return await ledger(self.db, self.key(name))

    def deps(self, policy: dict[str, float] | None = None, **client: Any) -> Deps:
        # The account's rate limit is not under test here: no queue at the limiter.
        client = {"requests_per_second": 500.0, **client}
        crm = services(self.session, policy={**QUICK, **(policy or {})}, **client)
        return crm_deps(self.db, self.session, crm)

    def job(self, name: str, *, job_id: str | None = None, **kw: Any) -> Job[Any]:
        lead_id = kw.pop("lead_id", self.lead_id)
        payload = message(self.connection_id, lead_id, self.key(name), **kw)
        return Job(
            job_id or f"job-{uuid.uuid4().hex[:10]}",
            "message.send",
            1,
            self.organization_id,
            payload,
        )

    async def send(self, job: Job[MessageSend], deps: Deps | None = None) -> Outcome:
        return await send.handle(job, deps or self.deps())

    def notes(self, lead_id: int | None = None) -> list[dict[str, Any]]:
        return self.server.notes_of("leads", lead_id or self.lead_id)


@pytest.fixture
async def kit(db: asyncpg.Pool) -> AsyncIterator[Kit]:
    org = f"org-{uuid.uuid4().hex[:8]}"
    async with kommo_server(rate_limit=None) as server, aiohttp.ClientSession() as session:
        new = await register_account(db, server, organization_id=org)
        lead = server.add_lead()
        yield Kit(db, server, session, new.id, org, lead["id"], uuid.uuid4().hex[:8])


async def test_a_message_is_posted_once_as_a_common_note_and_counted(kit: Kit) -> None:
    job = kit.job("k-plain", text="Your order has shipped")
    assert await kit.send(job) == Outcome.SUCCEEDED
    [note] = kit.notes()
    assert note["note_type"] == "common"
    assert note["params"] == {"text": f"Your order has shipped\n\n{marker_of(kit.key('k-plain'))}"}
    row = await kit.ledger("k-plain")
    assert (row["state"], row["note_id"], row["resolved_by"]) == ("sent", note["id"], "answer")
    assert (row["posts"], row["lookups"], row["job_id"]) == (1, 0, job.id)
    assert row["lease_until"] is None and row["unsettled_until"] is None
    assert kit.server.calls[POST] == 1 and kit.server.calls[LIST] == 0
    assert await sent_today(kit.db, kit.organization_id) == 1


async def test_an_email_is_an_extended_service_message(kit: Kit) -> None:
    assert await kit.send(kit.job("k-mail", text="Dear customer", channel="email")) == (
        Outcome.SUCCEEDED
    )
    [note] = kit.notes()
    assert note["note_type"] == "extended_service_message"
    assert note["params"] == {
        "service": "Email",
        "text": f"Dear customer\n\n{marker_of(kit.key('k-mail'))}",
    }


async def test_a_redelivered_job_after_sent_succeeds_without_calling_kommo(kit: Kit) -> None:
    job = kit.job("k-redelivered")
    await kit.send(job)
    before = sum(kit.server.calls.values())
    with capture_logs() as logs:
        assert await kit.send(job) == Outcome.SKIPPED
        assert await kit.send(kit.job("k-redelivered")) == Outcome.SKIPPED  # a republished copy
    assert sum(kit.server.calls.values()) == before  # not one request: no token, no lookup
    assert len(kit.notes()) == 1
    assert [e["event"] for e in logs] == ["message.skipped"] * 2
    assert await sent_today(kit.db, kit.organization_id) == 1


@pytest.mark.parametrize(
    "fault",
    [Fault("late", delay_s=1.0, route=POST), Fault.answer(500, POST, after=True)],
    ids=["answer-after-the-timeout", "created-then-500"],
)
async def test_an_unknown_outcome_is_resolved_by_a_lookup_without_resending(
    kit: Kit, fault: Fault
) -> None:
    kit.server.faults.append(fault)
    deps = kit.deps(timeout_s=0.3)
    with capture_logs() as logs:
        assert await kit.send(kit.job("k-unknown"), deps) == Outcome.SUCCEEDED
    [note] = kit.notes()
    row = await kit.ledger("k-unknown")
    assert (row["state"], row["note_id"], row["resolved_by"]) == ("sent", note["id"], "lookup")
    assert (row["posts"], row["lookups"]) == (1, 1)
    assert kit.server.calls[POST] == 1
    events = [e["event"] for e in logs]
    assert events == ["message.outcome_unknown", "message.looked_up", "message.sent"]
    assert await sent_today(kit.db, kit.organization_id) == 1


async def test_a_note_appearing_after_the_timeout_is_found_before_any_resend(kit: Kit) -> None:
    """Kommo creates the note only after the client gave up (a slow server): the next
    run, within the settle time, must look instead of posting."""
    kit.server.faults.append(Fault("deferred", delay_s=1.0, route=POST))
    deps = kit.deps(policy={"message_settle_s": 3.0}, timeout_s=0.3)
    job = kit.job("k-slow")
    with pytest.raises(RetryableError) as first:
        await kit.send(job, deps)
    assert kit.notes() == [] and first.value.delay_s == pytest.approx(3.0, abs=0.5)
    with pytest.raises(RetryableError, match="may still appear"):
        await kit.send(job, deps)  # the retry finds nothing yet, and must not post
    assert kit.notes() == [] and kit.server.calls[POST] == 1
    await eventually(lambda: _count(kit), lambda n: n == 1, timeout_s=5, what="the slow note")
    assert await kit.send(job, deps) == Outcome.SUCCEEDED  # well before the 3 s
    assert kit.server.calls[POST] == 1 and len(kit.notes()) == 1
    assert (await kit.ledger("k-slow"))["resolved_by"] == "lookup"


async def test_without_the_settle_time_the_slow_note_is_sent_twice(kit: Kit) -> None:
    """Control for the test above: with no settle time, the retry's lookup finds
    nothing (the note is not there yet), concludes, and posts again."""
    kit.server.faults.append(Fault("deferred", delay_s=1.5, route=POST))
    deps = kit.deps(policy={"message_settle_s": 0.0}, timeout_s=0.3)
    job = kit.job("k-unsettled")
    with pytest.raises(RetryableError):
        await kit.send(job, deps)
    assert await kit.send(job, deps) == Outcome.SUCCEEDED
    await eventually(lambda: _count(kit), lambda n: n == 2, timeout_s=5, what="both notes")
    assert kit.server.calls[POST] == 2


async def test_a_lookup_that_cannot_be_made_retries_and_never_sends_blind(kit: Kit) -> None:
    kit.server.faults.extend([Fault.answer(500, POST), *LIST_FAILS, *LIST_FAILS])
    deps, job = kit.deps(), kit.job("k-blind")
    with pytest.raises(RetryableError, match="the lookup failed"):
        await kit.send(job, deps)  # the POST's answer was a 500, and the lookup after it too
    with pytest.raises(RetryableError, match="HTTP 500"):
        await kit.send(job, deps)  # the retry must look before posting: it cannot, so it waits
    assert kit.server.calls[POST] == 1 and kit.server.calls[LIST] == 8
    row = await kit.ledger("k-blind")
    assert (row["state"], row["posts"], row["claim_token"]) == ("sending", 1, None)
    assert await until_done(lambda: kit.send(job, deps)) == Outcome.SUCCEEDED
    assert kit.server.calls[POST] == 2 and len(kit.notes()) == 1  # the first POST made none


async def test_two_copies_of_one_job_at_once_post_one_note(kit: Kit) -> None:
    kit.server.faults.append(Fault("slow", delay_s=0.5, route=POST))
    deps, job = kit.deps(), kit.job("k-twice")
    first = asyncio.create_task(kit.send(job, deps))
    await kit.server.wait_for_call(POST)  # the first copy is in the middle of its POST
    with pytest.raises(RetryableError, match="being sent by another run") as second:
        await kit.send(job, deps)
    assert 0 < (second.value.delay_s or 0) <= QUICK["message_lease_s"]
    assert await first == Outcome.SUCCEEDED
    assert await kit.send(job, deps) == Outcome.SKIPPED  # the second copy's retry
    assert kit.server.calls[POST] == 1 and len(kit.notes()) == 1


async def test_ten_copies_started_together_post_one_note(kit: Kit) -> None:
    deps, job = kit.deps(), kit.job("k-ten")
    outcomes = await asyncio.gather(*(until_done(lambda: kit.send(job, deps)) for _ in range(10)))
    assert sorted(outcomes) == sorted([Outcome.SUCCEEDED] + [Outcome.SKIPPED] * 9)
    assert kit.server.calls[POST] == 1 and len(kit.notes()) == 1
    assert await sent_today(kit.db, kit.organization_id) == 1


async def test_a_run_cancelled_mid_post_is_resolved_after_its_lease_without_resending(
    kit: Kit,
) -> None:
    """A worker killed (here: cancelled) while its POST is in flight; Kommo still creates
    the note. The next run waits out the lease, looks, finds it, and posts nothing."""
    kit.server.faults.append(Fault("late", delay_s=5.0, route=POST))  # created, answer held
    deps, job = kit.deps(), kit.job("k-killed")
    task = asyncio.create_task(kit.send(job, deps))
    await kit.server.wait_for_call(POST)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(RetryableError, match="being sent by another run"):
        await kit.send(job, deps)  # the dead run's lease still holds
    assert await until_done(lambda: kit.send(job, deps)) == Outcome.SUCCEEDED
    assert kit.server.calls[POST] == 1 and len(kit.notes()) == 1
    assert (await kit.ledger("k-killed"))["resolved_by"] == "lookup"


async def test_a_refusal_fails_with_kommos_reason_and_a_replay_sends_once(kit: Kit) -> None:
    missing = kit.server.next_id()
    job = kit.job("k-refused", lead_id=missing)
    with pytest.raises(PermanentError, match="Entity not found"):
        await kit.send(job)
    row = await kit.ledger("k-refused")
    assert row["state"] == "failed" and "Entity not found" in row["error"]
    with pytest.raises(PermanentError, match="Entity not found"):
        await kit.send(job)  # replayed before the lead exists: refused again, nothing sent
    kit.server.add_lead(missing)  # the cause is fixed; the operator replays
    assert await kit.send(job) == Outcome.SUCCEEDED
    assert await kit.send(job) == Outcome.SKIPPED  # replayed twice
    assert len(kit.notes(missing)) == 1 and kit.server.calls[POST] == 3
    assert await sent_today(kit.db, kit.organization_id) == 1


async def test_a_lead_deleted_while_the_outcome_is_unknown_is_not_sent_again(kit: Kit) -> None:
    """The note was created, its answer lost, and the lead deleted before a lookup: its
    notes cannot be listed, so finding nothing proves nothing. The job fails and the row
    stays unresolved; once the lead is restored, a replay finds the note."""
    kit.server.faults.extend([Fault.answer(500, POST, after=True), *LIST_FAILS])
    deps, job = kit.deps(), kit.job("k-deleted")
    with pytest.raises(RetryableError, match="the lookup failed"):
        await kit.send(job, deps)
    lead = kit.server.leads.pop(kit.lead_id)
    with pytest.raises(PermanentError, match="not in Kommo"):
        await until_done(lambda: kit.send(job, deps))
    assert (await kit.ledger("k-deleted"))["state"] == "sending"
    kit.server.leads[kit.lead_id] = lead  # restored
    assert await kit.send(job, deps) == Outcome.SUCCEEDED
    assert kit.server.calls[POST] == 1 and len(kit.notes()) == 1
    assert (await kit.ledger("k-deleted"))["resolved_by"] == "lookup"


async def test_a_key_reused_for_another_message_is_refused(kit: Kit) -> None:
    await kit.send(kit.job("k-reused", text="first"))
    with pytest.raises(KeyReused, match="another message"):
        await kit.send(kit.job("k-reused", text="second"))
    assert [n["params"]["text"].split("\n")[0] for n in kit.notes()] == ["first"]


async def test_a_job_of_another_organization_is_refused_before_anything(kit: Kit) -> None:
    job = kit.job("k-foreign")
    foreign = Job(job.id, job.type, 1, "org-someone-else", job.payload)
    with pytest.raises(PermanentError, match="another organization"):
        await kit.send(foreign)
    async with kit.db.acquire() as conn:
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM message_sends WHERE idempotency_key = 'k-foreign'"
            )
            == 0
        )
    assert sum(kit.server.calls.values()) == 0


async def test_usage_counts_every_message_once_per_organization_and_day(
    kit: Kit, db: asyncpg.Pool
) -> None:
    other = await register_account(db, kit.server, organization_id=f"{kit.organization_id}-b")
    kit.server.faults.append(Fault("late", delay_s=1.0, route=POST))  # one resolved by lookup
    deps = kit.deps(timeout_s=0.5)
    jobs = [kit.job(f"k-use-{i}") for i in range(20)]
    theirs = Job(
        "job-b",
        "message.send",
        1,
        other.organization_id,
        message(other.id, kit.lead_id, kit.key("k-b")),
    )
    runs = [until_done(functools.partial(kit.send, j, deps)) for j in [*jobs, *jobs[:5], theirs]]
    outcomes = await asyncio.gather(*runs)  # 5 of them redelivered while the first runs
    assert outcomes.count(Outcome.SKIPPED) == 5
    assert len(markers_on(kit.server, kit.lead_id)) == 21
    assert await sent_today(db, kit.organization_id) == 20
    assert await sent_today(db, other.organization_id) == 1


async def _count(kit: Kit) -> int:
    return len(kit.notes())


async def test_a_post_still_waiting_for_the_rate_limit_when_the_lease_ends_needs_no_lookup(
    kit: Kit,
) -> None:
    """The lease ran out before the POST's turn at the account's rate limit came: nothing
    left, so the next run posts without looking (and nothing is counted as a post)."""
    deps = kit.deps(policy={"message_lease_s": 1.0}, requests_per_second=0.4)  # 1 per 2.5 s
    assert await kit.send(kit.job("k-first"), deps) == Outcome.SUCCEEDED  # takes the turn
    job = kit.job("k-queued")
    with pytest.raises(RetryableError, match="not sent: the claim's lease ran out"):
        await kit.send(job, deps)
    row = await kit.ledger("k-queued")
    assert (row["state"], row["posts"], row["unsettled_until"]) == ("sending", 0, None)
    assert await kit.send(job) == Outcome.SUCCEEDED  # (a worker whose limiter has room)
    assert kit.server.calls[LIST] == 0 and kit.server.calls[POST] == 2
    assert (await kit.ledger("k-queued"))["lookups"] == 0


async def test_a_job_that_names_no_organization_is_refused_too(kit: Kit) -> None:
    """One rule for every CRM job (issue 19): the envelope names the connection's
    organization; a job without one no longer skips the check."""
    job = kit.job("k-orgless")
    orgless = Job(job.id, job.type, 1, None, job.payload)
    with pytest.raises(PermanentError, match="names no organization"):
        await kit.send(orgless)
    assert sum(kit.server.calls.values()) == 0


async def test_a_429_to_the_post_leaves_nothing_to_look_for(kit: Kit) -> None:
    """Kommo's 429 means it created nothing. Before, the client waited out the 429 inside
    the armed POST: a worker killed then left the message unsettled, and the next run
    waited the lease plus the settle time (120 s) and looked before posting. Now the
    claim is given up with nothing unsettled, the wait spends no attempt, and the next
    run posts at once without a lookup."""
    kit.server.faults.append(Fault.answer(429, POST))
    job = kit.job("k-limited")
    with pytest.raises(Deferred, match=r"not sent: Kommo: POST .* rate limited"):
        await kit.send(job)
    row = await kit.ledger("k-limited")
    assert (row["state"], row["posts"], row["unsettled_until"]) == ("sending", 0, None)
    assert await kit.send(job) == Outcome.SUCCEEDED
    assert kit.server.calls[LIST] == 0 and kit.server.calls[POST] == 2 and len(kit.notes()) == 1
