"""``message.send``: post a message to a Kommo lead, exactly once.

1. Claim the idempotency key's ledger row and commit (handlers/messaging/store.py).
   Already ``sent`` → skipped without calling Kommo. Claimed by another run
   whose lease is running → retry when it ends.
2. If an earlier POST may have created the note (the row is unsettled), look
   it up on the lead by its marker first. Found → sent. Not found while that
   POST may still land → retry when it can no longer. Not found after that →
   the lead must still exist (a deleted lead hides its notes), then post.
3. Record that a POST is about to be made (committed), then POST within the
   lease. Kommo's answer names the note → ``sent``, counted in the same
   transaction. A refusal (4xx: nothing was created) → ``failed`` and a
   permanent error with Kommo's reason. No usable answer → release the claim,
   look the note up once: found → sent; else retry once the POST has settled.

A lookup that cannot be made raises a retryable error: nothing is ever
posted a second time without one that found nothing. The guarantee and
where it ends: docs/RELIABILITY.md ("Messages: exactly once").
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from handlers.crm import connections
from handlers.crm.connections import Connection
from handlers.crm.services import require
from handlers.db import Pool
from handlers.deps import Deps
from handlers.errors import Deferred, JobError, PermanentError, RetryableError
from handlers.messaging import store
from handlers.messaging.message import Message, created_note_id
from handlers.messaging.store import Lease, Owned, Unsettled
from handlers.providers.kommo import KommoClient, RateLimited
from handlers.types import Job, Outcome
from schemas.jobs import MessageSend

log = structlog.get_logger(__name__)

ENTITY = "leads"
# The lookup lists the lead's notes updated since the first POST, less this
# (Kommo's clock against the database's); a wider window only costs pages.
LOOKUP_CLOCK_SKEW_S = 3600

T = TypeVar("T")


async def handle(job: Job[MessageSend], deps: Deps) -> Outcome:
    crm = require(deps.crm)
    async with deps.db.acquire() as conn:
        connection = await connections.load(conn, job.payload.connection_id)
    _check(job, connection)
    message = Message.of(job.payload, connection.organization_id)
    lease = Lease(crm.policy.message_lease_s, crm.policy.message_settle_s)
    claim = await store.claim(deps.db, message, job.id, lease)
    if isinstance(claim, store.Sent):
        log.info("message.skipped", idempotency_key=message.key, note_id=claim.note_id)
        return Outcome.SKIPPED
    if isinstance(claim, store.Busy):
        raise RetryableError(
            f"message {message.key!r} is being sent by another run", delay_s=claim.wait_s
        )
    return await _Run(deps.db, crm.client(deps.db, connection), claim, job.id, lease).send()


def _check(job: Job[MessageSend], connection: Connection) -> None:
    connections.check_organization(connection.id, connection.organization_id, job.organization_id)
    if connection.needs_reauth:
        raise PermanentError(f"CRM connection {connection.id} needs re-consent")


@dataclass(frozen=True, slots=True)
class _Run:
    """One run that holds the claim on its message."""

    db: Pool
    client: KommoClient
    owned: Owned
    job_id: str
    lease: Lease

    @property
    def message(self) -> Message:
        return self.owned.message

    async def send(self) -> Outcome:
        if self.owned.unsettled is not None:
            found = await self._holding(self._resolve(self.owned.unsettled))
            if found is not None:
                return await self._sent(found, "lookup")
        deadline, first_post = await self._holding(
            store.arm(self.db, self.owned, self.job_id, self.lease)
        )
        note_id = await self._post(deadline)
        if note_id is not None:
            return await self._sent(note_id, "answer")
        return await self._sent(await self._look_up_after_unknown(first_post), "lookup")

    async def _holding(self, step: Awaitable[T]) -> T:
        """Run ``step`` within the claim; on any failure give the claim up (no POST made)."""
        try:
            async with asyncio.timeout_at(self.owned.deadline):
                return await step
        except TimeoutError as exc:
            reason = _reason(exc)
            await store.release(self.db, self.owned, reason)
            raise RetryableError(f"message {self.message.key!r}: {reason}") from None
        except Exception as exc:
            await store.release(self.db, self.owned, _reason(exc))
            raise

    async def _resolve(self, unsettled: Unsettled) -> int | None:
        """Before posting again: the note's id if an earlier POST created it, else None."""
        m = self.message
        found = await self._find(unsettled.first_post_epoch)
        if found is not None:
            return found
        if unsettled.wait_s > 0:
            raise RetryableError(
                f"message {m.key!r}: a note from an earlier attempt may still appear in"
                f" Kommo; looking again in {unsettled.wait_s:.1f} s",
                delay_s=unsettled.wait_s,
            )
        lead = await self.client.lead(m.lead_id)
        if lead is None or lead.get("is_deleted"):
            raise PermanentError(
                f"lead {m.lead_id} is not in Kommo (deleted?): its notes cannot be searched,"
                " so the message is not sent again; replay the job if the lead is restored"
            )
        return None

    async def _post(self, deadline: float) -> int | None:
        """POST the note; its id, or None when the outcome is unknown (claim released)."""
        requests = self.client.calls
        try:
            async with asyncio.timeout_at(deadline):
                created = await self.client.add_notes(ENTITY, [self.message.note()])
        except PermanentError as refused:
            await store.fail(self.db, self.owned, str(refused))
            log.warning("message.refused", idempotency_key=self.message.key, reason=str(refused))
            raise
        except RateLimited as limited:  # Kommo created nothing: the claim goes, nothing to find
            reason = f"not sent: {limited}"
            await store.disarm(self.db, self.owned, reason)
            wait_s = limited.delay_s or 1.0
            raise Deferred(f"message {self.message.key!r}: {reason}", delay_s=wait_s) from None
        except Exception as exc:  # no answer, or none we can trust: the note may exist
            if self.client.calls == requests:  # it never left (waiting for the rate limit)
                reason = f"not sent: {_reason(exc)}"
                await store.disarm(self.db, self.owned, reason)
                raise RetryableError(f"message {self.message.key!r}: {reason}") from None
            created, reason = [], _reason(exc)
        else:
            reason = "Kommo's answer named no note"
        note_id = created_note_id(created, self.message)
        if note_id is None:
            await store.release(self.db, self.owned, reason, self.lease.settle_s)
            log.warning("message.outcome_unknown", idempotency_key=self.message.key, reason=reason)
        return note_id

    async def _look_up_after_unknown(self, first_post: float) -> int:
        """Right after a POST whose outcome is unknown (claim released): found, or retry."""
        m, settle_s = self.message, self.lease.settle_s
        try:
            found = await self._find(first_post)
        except Exception as exc:
            raise RetryableError(
                f"message {m.key!r}: the POST's outcome is unknown and the lookup failed"
                f" ({_reason(exc)}); looking again later"
            ) from None
        if found is None:
            raise RetryableError(
                f"message {m.key!r}: the POST's outcome is unknown and no note is visible"
                f" yet; looking again in {settle_s:.1f} s",
                delay_s=settle_s,
            )
        return found

    async def _find(self, first_post: float) -> int | None:
        m = self.message
        note = await self.client.find_note(
            ENTITY,
            m.lead_id,
            m.marker,
            note_types=(m.note_type,),
            updated_since=int(first_post - LOOKUP_CLOCK_SKEW_S),
        )
        await store.looked_up(self.db, m)
        note_id = None if note is None else int(note["id"])
        log.info("message.looked_up", idempotency_key=m.key, found=note_id is not None)
        return note_id

    async def _sent(self, note_id: int, resolved_by: str) -> Outcome:
        earlier = await store.mark_sent(self.db, self.message, note_id, resolved_by)
        if earlier is None:
            log.info(
                "message.sent",
                idempotency_key=self.message.key,
                note_id=note_id,
                resolved_by=resolved_by,
            )
        elif earlier != note_id:  # beyond the guarantee: see docs/RELIABILITY.md
            log.error(
                "message.sent_twice",
                idempotency_key=self.message.key,
                note_id=note_id,
                earlier_note_id=earlier,
            )
        return Outcome.SUCCEEDED


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):  # the client turns its own timeouts into JobErrors
        return "the claim's lease ran out"
    if isinstance(exc, JobError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
