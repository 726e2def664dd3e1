"""The crash-loop guard: a job that keeps killing its worker is dead-lettered, not rerun.

A job whose handler takes the whole process down (a segfault in a C
extension, an OOM kill, a liveness-probe kill while it blocks the loop) is
redelivered after every restart and would kill every worker that picks it
up. The guard counts, per record, the deaths it may have caused:

- **Reservations.** Before a record of a guarded partition runs, the
  partition's row in ``job_journal`` must say that records up to at least
  its offset may be running (``reserved_to``). Reservations are written
  ahead, in windows that grow with the partition's pace, so a record rarely
  waits for one. A clean revoke or shutdown clears them.
- **Claims**, fenced by the Kafka generation that assigned the partition
  (an older generation's claim never takes a row a newer one holds). A
  worker assigned a partition whose row still holds a reservation knows its
  previous owner died: every record from the committed offset up to the
  reservation may have been running, and gets one more death in
  ``job_crashes`` (``job_journal_claim_fenced``) — **but never more than
  ``max_crashes - 1``**: a death among others cannot convict anyone.
- **Running alone.** A record on its last chance (``max_crashes - 1``
  deaths, a *suspect*) runs each attempt alone in the process
  (``streams.isolation``), and the row names just that record
  (``isolated_offset``): a death then is its own, the one that takes it to
  ``max_crashes``. It holds the gate only while its code runs, never while
  it waits between attempts, and it stops new jobs from starting for a
  bounded time only. Records with fewer deaths run beside the others as
  usual. A suspect that finishes has its count deleted.

So a job that kills its worker every time is dead-lettered after exactly
``max_crashes`` deaths (the last one alone), a healthy neighbour never
reaches that count, and a single death (a rolling deploy's SIGKILL, an OOM
kill) costs nothing but a few rows. Every write goes through one connection
with ``synchronous_commit`` off: it must survive the worker's death, not the
database's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from streams.dberrors import describe_db_error
from streams.isolation import Isolation
from streams.retry import dependency_wait_s

log = structlog.get_logger(__name__)

MIN_WINDOW = 4
UNKNOWN_END = 2**62  # no end offset known: every reserved record is a suspect
MAX_WINDOW = 2048
# A statement stuck this long (a lock held by a session that went away unseen) is
# cancelled and tried again; the guard's own statements take milliseconds.
STATEMENT_S = 30.0
LOST_GRACE_S = 30.0  # a partition lost this long while still assigned: the worker is not ready

CLAIM = "SELECT * FROM job_journal_claim_fenced($1, $2, $3, $4, $5, $6, $7, $8)"
RESERVE = """
UPDATE job_journal AS j SET reserved_to = GREATEST(j.reserved_to, u.r), updated_at = now()
  FROM unnest($3::text[], $4::integer[], $5::bigint[]) AS u(t, p, r)
 WHERE j.group_id = $1 AND j.owner = $2 AND j.topic = u.t AND j.partition = u.p
RETURNING j.topic, j.partition, j.reserved_to
"""
FORGET = """
DELETE FROM job_crashes AS c USING unnest($2::text[], $3::integer[], $4::bigint[]) AS d(t, p, o)
 WHERE c.group_id = $1 AND c.topic = d.t AND c.partition = d.p AND c.record_offset = d.o
"""
# Running alone drops every reservation of this worker: nothing else runs now.
ISOLATE = """
WITH done AS (
    DELETE FROM job_crashes AS c USING unnest($5::text[], $6::integer[], $7::bigint[]) AS d(t, p, o)
     WHERE c.group_id = $1 AND c.topic = d.t AND c.partition = d.p AND c.record_offset = d.o
)
UPDATE job_journal AS j
   SET isolated_offset = CASE WHEN j.topic = $3 AND j.partition = $4 THEN $8::bigint END,
       reserved_to = NULL, updated_at = now()
 WHERE j.group_id = $1 AND j.owner = $2
   AND (j.reserved_to IS NOT NULL OR j.isolated_offset IS NOT NULL
        OR (j.topic = $3 AND j.partition = $4))
"""
RELEASE = """
UPDATE job_journal AS j SET reserved_to = NULL, isolated_offset = NULL, updated_at = now()
  FROM unnest($3::text[], $4::integer[]) AS u(t, p)
 WHERE j.group_id = $1 AND j.owner = $2 AND j.topic = u.t AND j.partition = u.p
"""


class PartitionLost(asyncio.CancelledError):
    """A newer generation of the group gave this partition to another worker: do not run it."""


@dataclass(slots=True)
class _Partition:
    topic: str
    partition: int
    generation: int
    last_chance: int  # deaths at which a record runs alone (max_crashes - 1)
    claimed: bool = False
    lost: bool = False
    lost_at: float = 0.0
    suspects: dict[int, int] = field(default_factory=dict)  # offset -> deaths
    reserved: int = -1  # written: records up to here may run
    requested: int = -1
    window: int = MIN_WINDOW
    last_request: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


@dataclass(frozen=True, slots=True)
class Entry:
    """Leave to run one record's code: alone (a suspect on its last chance) or beside others.

    ``crashes``: the deaths the record may have caused so far.
    """

    tp: Hashable | None = None
    offset: int = -1
    crashes: int = 0
    alone: bool = False


SHARED = Entry()


class CrashGuard:
    """Reservations, claims and isolation for the partitions of guarded job types.

    ``topics`` maps each guarded topic to its job type's ``max_crashes`` (≥ 2).
    """

    def __init__(
        self,
        dsn: str,
        group_id: str,
        topics: Mapping[str, int],
        isolation: Isolation,
        app: str,
    ) -> None:
        self._dsn = dsn
        self._group = group_id
        self._owner = uuid.uuid4().hex
        self._app = app
        self.max_crashes = dict(topics)
        self.topics = frozenset(topics)
        self.isolation = isolation
        self._parts: dict[Hashable, _Partition] = {}
        self._claims: dict[Hashable, asyncio.Task[None]] = {}
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()  # one statement at a time, in order
        self._reserve: dict[Hashable, int] = {}
        self._reserve_wake = asyncio.Event()
        self._forget: set[tuple[str, int, int]] = set()  # finished suspects
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        if self.topics:
            self._conn = await self._connect()
            self._task = asyncio.create_task(self._reserver(), name="crash-guard")

    async def close(self) -> None:
        for task in [*self._claims.values(), *([self._task] if self._task else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._claims.clear()
        self._task = None
        if self._conn is not None:
            await self._conn.close(timeout=5)
            self._conn = None

    async def _connect(self) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(
            self._dsn,
            server_settings={"synchronous_commit": "off", "application_name": self._app},
        )
        return conn

    # -- assignment ------------------------------------------------------------------------

    def assigned(self, starts: dict[Any, int], ends: dict[Any, int], generation: int) -> None:
        """Partitions assigned in ``generation``, where they start and where their logs end.

        Claims the guarded ones. Records written after a death cannot have
        caused it: suspects stop at the log's end, whatever was reserved beyond it.
        """
        fresh: dict[Hashable, tuple[int, int]] = {}
        for tp, start in starts.items():
            part = self._parts.get(tp)
            if tp.topic in self.topics and (part is None or part.generation != generation):
                last_chance = max(self.max_crashes[tp.topic] - 1, 1)
                self._parts[tp] = _Partition(tp.topic, tp.partition, generation, last_chance)
                fresh[tp] = (start, ends.get(tp, UNKNOWN_END))
        if fresh:
            task = asyncio.ensure_future(self._claim(fresh, generation))
            for tp in fresh:
                self._claims[tp] = task
            task.add_done_callback(lambda t: self._claimed(t, fresh))

    def _claimed(self, task: asyncio.Future[None], bounds: dict[Hashable, tuple[int, int]]) -> None:
        for tp in bounds:
            if self._claims.get(tp) is task:
                del self._claims[tp]
        if not task.cancelled() and task.exception() is not None:
            log.error("crashguard.claim_failed", error=repr(task.exception())[:300])

    async def _claim(self, bounds: dict[Hashable, tuple[int, int]], generation: int) -> None:
        parts = [(tp, self._parts[tp]) for tp in bounds]
        rows = await self._write(
            CLAIM,
            self._owner,
            generation,
            [p.topic for _, p in parts],
            [p.partition for _, p in parts],
            [start for start, _ in bounds.values()],
            [end for _, end in bounds.values()],
            [p.last_chance for _, p in parts],
        )
        owned = {(r[0], r[1]) for r in rows if r[2] is None}
        by_key = {(p.topic, p.partition): p for _, p in parts}
        for topic, partition, offset, crashes in rows:
            if offset is not None:
                by_key[(topic, partition)].suspects[offset] = crashes
        for tp, part in parts:
            if self._parts.get(tp) is not part:
                continue  # released meanwhile
            if (part.topic, part.partition) not in owned:
                part.lost, part.lost_at = True, time.monotonic()
                log.error(
                    "crashguard.partition_lost",
                    partition=f"{part.topic}:{part.partition}",
                    generation=generation,
                )
            part.claimed = True
            part.notify()
        suspects = sum(len(p.suspects) for _, p in parts)
        if suspects:
            last = sum(1 for _, p in parts for c in p.suspects.values() if c >= p.last_chance)
            log.warning(
                "crashguard.suspects", partitions=len(parts), suspects=suspects, last_chance=last
            )

    async def release(self, tps: Iterable[Any] | None = None) -> None:
        """A clean revoke or shutdown: nothing of these partitions runs any more."""
        chosen = list(
            self._parts.items() if tps is None else ((tp, self._parts.get(tp)) for tp in tps)
        )
        parts = [(tp, p) for tp, p in chosen if p is not None]
        for tp, part in parts:
            self._parts.pop(tp, None)
            part.notify()  # records waiting for it see it gone
            claim = self._claims.pop(tp, None)
            if claim is not None and not any(t is claim for t in self._claims.values()):
                claim.cancel()  # its partitions are all gone: a late claim has nothing to do
        if parts and self._conn is not None:
            await self._write(
                RELEASE, self._owner, [p.topic for _, p in parts], [p.partition for _, p in parts]
            )

    def stuck(self, now: float | None = None) -> list[str]:
        """Assigned partitions another worker's claim has held for ``LOST_GRACE_S``."""
        now = time.monotonic() if now is None else now
        return [
            f"{p.topic}:{p.partition}"
            for p in self._parts.values()
            if p.lost and now - p.lost_at >= LOST_GRACE_S
        ]

    # -- running one record ----------------------------------------------------------------

    def enter_now(self, tp: Hashable, offset: int) -> Entry | None:
        """Leave to run at once (the common case), or None: ``await enter()`` instead."""
        part = self._parts.get(tp)
        if part is None or not part.claimed or offset > part.reserved or offset in part.suspects:
            return None
        if not self.isolation.try_shared():
            return None
        if part.requested - offset < part.window // 2:
            self._request(tp, part, offset)
        return SHARED

    async def enter(self, tp: Hashable, offset: int) -> Entry:
        part = self._parts.get(tp)
        if part is None:
            raise asyncio.CancelledError  # revoked meanwhile: its new owner runs it
        while not part.claimed:
            await part.changed.wait()
        crashes = part.suspects.get(offset, 0)
        if crashes >= part.last_chance:
            await self.isolation.exclusive()
            try:
                self._check(tp, part)
                await self._isolate(part, offset)
            except BaseException:
                self.isolation.release_exclusive()
                raise
            return Entry(tp, offset, crashes, alone=True)
        await self.isolation.shared()
        try:
            while offset > part.reserved:
                self._check(tp, part)
                if part.requested < offset + part.window // 2:
                    self._request(tp, part, offset)
                await part.changed.wait()
            self._check(tp, part)
        except BaseException:
            self.isolation.release_shared()
            raise
        return Entry(tp, offset, crashes) if crashes else SHARED

    def _check(self, tp: Hashable, part: _Partition) -> None:
        if part.lost:
            raise PartitionLost(f"{part.topic}:{part.partition} belongs to another worker")
        if self._parts.get(tp) is not part:
            raise asyncio.CancelledError  # revoked meanwhile

    async def leave_alone(self, entry: Entry) -> None:
        """A suspect's attempt is over: the row names nobody, others may run."""
        try:
            await self._isolate(None, -1)
        finally:
            self.isolation.release_exclusive()

    def finished(self, tp: Hashable, offset: int) -> None:
        """The record's run ended here for good (it will not run again): forget its deaths."""
        part = self._parts.get(tp)
        if part is not None and part.suspects.pop(offset, None) is not None:
            self._forget.add((part.topic, part.partition, offset))
            self._reserve_wake.set()

    # -- writes ----------------------------------------------------------------------------

    async def _isolate(self, part: _Partition | None, offset: int) -> None:
        for other in self._parts.values():  # every reservation is dropped
            other.reserved = other.requested = -1
        forget = self._take_forget()
        await self._write(
            ISOLATE,
            self._owner,
            part.topic if part else "",
            part.partition if part else -1,
            [f[0] for f in forget],
            [f[1] for f in forget],
            [f[2] for f in forget],
            offset if part else None,
            fetch=False,
        )

    def _take_forget(self) -> list[tuple[str, int, int]]:
        forget = list(self._forget)
        self._forget.clear()
        return forget

    def _request(self, tp: Hashable, part: _Partition, offset: int) -> None:
        now = time.monotonic()
        since = now - part.last_request
        if since < 0.1:
            part.window = min(part.window * 2, MAX_WINDOW)
        elif since > 1.0:
            part.window = max(part.window // 2, MIN_WINDOW)
        part.last_request = now
        part.requested = max(part.requested, offset + part.window)
        self._reserve[tp] = part.requested
        self._reserve_wake.set()

    async def _reserver(self) -> None:
        while True:
            await self._reserve_wake.wait()
            self._reserve_wake.clear()
            if self._forget:
                forget = self._take_forget()
                await self._write(
                    FORGET,
                    [f[0] for f in forget],
                    [f[1] for f in forget],
                    [f[2] for f in forget],
                    fetch=False,
                )
            wanted, self._reserve = self._reserve, {}
            parts = {tp: p for tp in wanted if (p := self._parts.get(tp)) is not None}
            if self.isolation.exclusive_held:
                for part in parts.values():  # nothing runs beside a suspect: ask again later
                    part.requested = part.reserved
                continue
            if parts:
                await self._reserve_now(parts, wanted)

    async def _reserve_now(
        self, parts: dict[Hashable, _Partition], wanted: dict[Hashable, int]
    ) -> None:
        rows = await self._write(
            RESERVE,
            self._owner,
            [p.topic for p in parts.values()],
            [p.partition for p in parts.values()],
            [wanted[tp] for tp in parts],
        )
        written = {(r[0], r[1]): r[2] for r in rows}
        for part in parts.values():
            reserved = written.get((part.topic, part.partition))
            if reserved is None:
                if not part.lost:
                    part.lost, part.lost_at = True, time.monotonic()
                    log.error(
                        "crashguard.partition_lost",
                        partition=f"{part.topic}:{part.partition}",
                        generation=part.generation,
                    )
            else:
                part.reserved = max(part.reserved, reserved)
            part.notify()

    async def _write(self, sql: str, *args: Any, fetch: bool = True) -> list[Any]:
        """Run one statement, waiting out an outage (jobs wait for it; nothing is skipped).

        Every failure is waited out: these statements carry no record's data,
        so no database error can be a record's fault. Errors outside the
        driver's usual classes (asyncpg's client and protocol errors) are
        waited out too: the claim and reservation tasks must never die, or
        the records of every partition they serve would wait for good.
        """
        failures = 0
        while True:
            try:
                async with self._lock:
                    conn = self._conn
                    if conn is None or conn.is_closed():
                        conn = self._conn = await self._connect()
                    if fetch:
                        return list(await conn.fetch(sql, self._group, *args, timeout=STATEMENT_S))
                    await conn.execute(sql, self._group, *args, timeout=STATEMENT_S)
                    return []
            except Exception as exc:
                failures += 1
                wait_s = dependency_wait_s(failures)
                log.warning("crashguard.write_failed", error=describe_db_error(exc), delay_s=wait_s)
                await self._drop_connection_after(exc)
                await asyncio.sleep(wait_s)

    async def _drop_connection_after(self, exc: BaseException) -> None:
        """A connection that failed this way is not reused (a read-only or broken session)."""
        if not isinstance(exc, OSError | asyncpg.InterfaceError) and self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=1)
            self._conn = None
