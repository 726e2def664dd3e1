"""The send ledger (``message_sends``) and the daily usage count (``message_usage``).

A row per idempotency key, in one of three states:

- ``sending``: a run claimed it. ``claim_token`` and ``lease_until`` say who
  may act on it and until when; another run waits until the lease runs out.
  ``unsettled_until`` is set before every POST (to the lease's end plus the
  settle time) and means "a note for this key may exist, or still appear in
  Kommo, until then": nobody posts again until a lookup made after that
  moment has found nothing. NULL means no POST was made since the last
  definitive answer, so there is nothing to look up.
- ``sent``: Kommo holds the note ``note_id`` (from its answer, or found by a
  lookup). Final; a later run is skipped.
- ``failed``: Kommo refused the last POST (a 4xx: nothing was created).
  A later run — a dead-letter replay — sends again, once.

Every statement commits on its own, before the call to Kommo that follows
it; ``mark_sent`` counts the message in the same transaction. Times are the
database's clock; a lease's local deadline is measured from a moment taken
before the claim's transaction began, so it always ends before
``lease_until`` does.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, replace

import asyncpg

from handlers.db import Pool
from handlers.errors import PermanentError, RetryableError
from handlers.messaging.message import Message

CLAIM_NEW = """
INSERT INTO message_sends (
    idempotency_key, organization_id, connection_id, lead_id, channel, note_type,
    fingerprint, state, job_id, claim_token, lease_until
)
VALUES ($1, $2, $3, $4, $5, $6, $7, 'sending', $8, $9, now() + make_interval(secs => $10))
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING idempotency_key
"""
LOCK = """
SELECT state, fingerprint, note_type, note_id,
       coalesce(lease_until > now(), false) AS leased,
       extract(epoch FROM lease_until - now())::float8 AS lease_left_s,
       extract(epoch FROM unsettled_until - now())::float8 AS unsettled_left_s,
       extract(epoch FROM first_post_at)::float8 AS first_post_epoch
FROM message_sends WHERE idempotency_key = $1
FOR UPDATE
"""
TAKE = """
UPDATE message_sends
SET state = 'sending', job_id = $2, claim_token = $3,
    lease_until = now() + make_interval(secs => $4), updated_at = now()
WHERE idempotency_key = $1
"""
# Before each POST: renew the lease (the POST gets all of it) and mark the
# key unsettled until the lease's end plus the settle time.
ARM = """
UPDATE message_sends
SET posts = posts + 1, job_id = $3,
    lease_until = now() + make_interval(secs => $4),
    unsettled_until = greatest(unsettled_until, now() + make_interval(secs => $4 + $5)),
    first_post_at = coalesce(first_post_at, now()), updated_at = now()
WHERE idempotency_key = $1 AND claim_token = $2 AND state = 'sending'
RETURNING extract(epoch FROM first_post_at)::float8
"""
# Give the claim up. After a POST whose outcome is unknown, that POST has been
# abandoned now: a note from it can appear until now + settle at the latest.
RELEASE = """
UPDATE message_sends
SET claim_token = NULL, lease_until = now(), error = $3, updated_at = now(),
    unsettled_until = CASE WHEN $4::float8 IS NULL THEN unsettled_until
                           ELSE now() + make_interval(secs => $4) END
WHERE idempotency_key = $1 AND claim_token = $2 AND state = 'sending'
"""
# The POST never left (the lease ran out while it waited for its turn at the
# account's rate limit): nothing can land, and any earlier POST was settled
# (a run posts only after a conclusive lookup), so nothing is unsettled.
DISARM = """
UPDATE message_sends
SET posts = posts - 1, unsettled_until = NULL, claim_token = NULL, lease_until = now(),
    error = $3, updated_at = now()
WHERE idempotency_key = $1 AND claim_token = $2 AND state = 'sending'
"""
FAIL = """
UPDATE message_sends
SET state = 'failed', error = $3, claim_token = NULL, lease_until = NULL,
    unsettled_until = NULL, updated_at = now()
WHERE idempotency_key = $1 AND claim_token = $2 AND state = 'sending'
"""
MARK_SENT = """
UPDATE message_sends
SET state = 'sent', note_id = $2, resolved_by = $3, sent_at = now(), error = NULL,
    claim_token = NULL, lease_until = NULL, unsettled_until = NULL, updated_at = now()
WHERE idempotency_key = $1 AND state <> 'sent'
RETURNING organization_id
"""
COUNT_SENT = """
INSERT INTO message_usage AS u (organization_id, day, sent)
VALUES ($1, (now() AT TIME ZONE 'UTC')::date, 1)
ON CONFLICT (organization_id, day) DO UPDATE SET sent = u.sent + 1, updated_at = now()
"""
SENT_NOTE = "SELECT note_id FROM message_sends WHERE idempotency_key = $1"
LOOKED_UP = "UPDATE message_sends SET lookups = lookups + 1 WHERE idempotency_key = $1"


class KeyReused(PermanentError):
    """An idempotency key arrived with another message than the one it was first used for."""


@dataclass(frozen=True, slots=True)
class Sent:
    """Already sent: Kommo holds ``note_id``."""

    note_id: int


@dataclass(frozen=True, slots=True)
class Busy:
    """Another run holds the claim for ``wait_s`` more seconds."""

    wait_s: float


@dataclass(frozen=True, slots=True)
class Unsettled:
    """An earlier POST may have created the note: look before posting.

    ``wait_s`` until a lookup that finds nothing proves nothing was created
    (≤ 0: a lookup now does); ``first_post_epoch``: when the first POST began.
    """

    wait_s: float
    first_post_epoch: float


@dataclass(frozen=True, slots=True)
class Owned:
    """This run holds the claim until ``deadline`` (``loop.time()``)."""

    token: uuid.UUID
    deadline: float
    message: Message
    unsettled: Unsettled | None


Claim = Sent | Busy | Owned


@dataclass(frozen=True, slots=True)
class Lease:
    """The ledger's timing: how long a claim lasts, and how long a POST may take to land."""

    lease_s: float
    settle_s: float

    def deadline(self, started: float) -> float:
        """The local end of a lease granted by a transaction begun after ``started``."""
        return started + self.lease_s * 0.9


async def claim(db: Pool, message: Message, job_id: str, lease: Lease) -> Claim:
    """Claim ``message``'s row for this run (committed when this returns)."""
    token = uuid.uuid4()
    started = asyncio.get_running_loop().time()
    async with db.acquire() as conn, conn.transaction():
        m = message
        inserted = await conn.fetchval(
            CLAIM_NEW,
            m.key,
            m.organization_id,
            m.connection_id,
            m.lead_id,
            m.channel,
            m.note_type,
            m.fingerprint,
            job_id,
            token,
            lease.lease_s,
        )
        if inserted is not None:
            return Owned(token, lease.deadline(started), message, None)
        row = await conn.fetchrow(LOCK, m.key)
        if row is None:  # the insert conflicted, so the row exists and LOCK waits for it
            raise RuntimeError(f"message row {m.key!r} vanished while being claimed")
        if row["fingerprint"] != m.fingerprint:
            raise KeyReused(
                f"idempotency key {m.key!r} was first used for another message"
                " (connection, lead, channel or text differ); nothing was sent"
            )
        if row["state"] == "sent":
            return Sent(row["note_id"])
        if row["state"] == "sending" and row["leased"]:
            return Busy(row["lease_left_s"])
        await conn.execute(TAKE, m.key, job_id, token, lease.lease_s)
    unsettled = None
    if row["unsettled_left_s"] is not None:
        unsettled = Unsettled(row["unsettled_left_s"], row["first_post_epoch"])
    # The note type the key was first posted with, whatever today's mapping says.
    stored = replace(message, note_type=row["note_type"])
    return Owned(token, lease.deadline(started), stored, unsettled)


async def arm(db: Pool, owned: Owned, job_id: str, lease: Lease) -> tuple[float, float]:
    """Record that a POST is about to be made; (its local deadline, first POST's epoch).

    RetryableError when the claim was lost (another run took the row over).
    """
    started = asyncio.get_running_loop().time()
    async with db.acquire() as conn:
        first_post = await conn.fetchval(
            ARM, owned.message.key, owned.token, job_id, lease.lease_s, lease.settle_s
        )
    if first_post is None:
        raise RetryableError(f"the claim on message {owned.message.key!r} was lost")
    return lease.deadline(started), float(first_post)


async def release(
    db: Pool, owned: Owned, error: str | None, settle_from_now_s: float | None = None
) -> None:
    """Give the claim up, leaving the row ``sending`` (and unsettled, if a POST was made)."""
    async with db.acquire() as conn:
        await conn.execute(RELEASE, owned.message.key, owned.token, error, settle_from_now_s)


async def disarm(db: Pool, owned: Owned, error: str) -> None:
    """The armed POST was never sent: give the claim up with nothing to look up."""
    async with db.acquire() as conn:
        await conn.execute(DISARM, owned.message.key, owned.token, error)


async def fail(db: Pool, owned: Owned, error: str) -> None:
    """Kommo refused the POST: nothing was created; a later run may send again."""
    async with db.acquire() as conn:
        await conn.execute(FAIL, owned.message.key, owned.token, error)


async def mark_sent(db: Pool, message: Message, note_id: int, resolved_by: str) -> int | None:
    """Record the note and count the message, in one transaction.

    None when this call recorded it; else the note id recorded before (by
    another run), so the caller can tell a duplicate from the same note.
    """
    async with db.acquire() as conn, conn.transaction():
        organization_id = await conn.fetchval(MARK_SENT, message.key, note_id, resolved_by)
        if organization_id is not None:
            await conn.execute(COUNT_SENT, organization_id)
            return None
        earlier: int = await conn.fetchval(SENT_NOTE, message.key)
        return earlier


async def looked_up(db: Pool, message: Message) -> None:
    async with db.acquire() as conn:
        await conn.execute(LOOKED_UP, message.key)


async def ledger_row(conn: asyncpg.Connection, key: str) -> asyncpg.Record | None:
    """The ledger row of ``key`` (for operators and tests)."""
    return await conn.fetchrow("SELECT * FROM message_sends WHERE idempotency_key = $1", key)
