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
- **Claims.** A worker assigned a partition whose row still holds a
  reservation knows its previous owner died: every record from the
  committed offset up to the reservation may have been running, and gets
  one more death in ``job_crashes`` (``job_journal_claim``).
- **Isolation.** A record with a death to its name (a *suspect*) runs alone
  in the process: running jobs finish first, nothing else starts, and the
  row names just that record (``isolated_offset``). A death then is its own;
  an innocent suspect finishes and its count is deleted. A suspect with
  ``max_crashes`` deaths is dead-lettered without running.

So a job that kills its worker every time is dead-lettered after exactly
``max_crashes`` deaths, and jobs that were merely running beside it run
again (alone, once) instead of being blamed. Every write goes through one
connection with ``synchronous_commit`` off: it must survive the worker's
death, not the database's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from streams.isolation import Isolation
from streams.retry import dependency_wait_s

log = structlog.get_logger(__name__)

MIN_WINDOW = 4
UNKNOWN_END = 2**62  # no end offset known: every reserved record is a suspect
MAX_WINDOW = 2048

CLAIM = "SELECT * FROM job_journal_claim($1, $2, $3, $4, $5, $6)"
RESERVE = """
UPDATE job_journal AS j SET reserved_to = GREATEST(j.reserved_to, u.r), updated_at = now()
  FROM unnest($3::text[], $4::integer[], $5::bigint[]) AS u(t, p, r)
 WHERE j.group_id = $1 AND j.owner = $2 AND j.topic = u.t AND j.partition = u.p
RETURNING j.topic, j.partition, j.reserved_to
"""
# Entering isolation drops every reservation of this worker: nothing else runs now.
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


@dataclass(slots=True)
class _Partition:
    topic: str
    partition: int
    generation: int
    claimed: bool = False
    lost: bool = False
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
    """Leave to run one record: alone (a suspect, with its deaths so far) or beside others."""

    tp: Hashable | None = None
    offset: int = -1
    crashes: int = 0
    alone: bool = False


SHARED = Entry()


class CrashGuard:
    """Reservations, claims and isolation for the partitions of guarded job types."""

    def __init__(
        self, dsn: str, group_id: str, topics: Iterable[str], isolation: Isolation, app: str
    ) -> None:
        self._dsn = dsn
        self._group = group_id
        self._owner = uuid.uuid4().hex
        self._app = app
        self.topics = frozenset(topics)
        self.isolation = isolation
        self._parts: dict[Hashable, _Partition] = {}
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
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
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
        """Partitions assigned, where they start and where their logs end: claim the guarded ones.

        Records written after a death cannot have caused it: suspects stop
        at the log's end, whatever was reserved beyond it.
        """
        fresh: dict[Hashable, tuple[int, int]] = {}
        for tp, start in starts.items():
            part = self._parts.get(tp)
            if tp.topic in self.topics and (part is None or part.generation != generation):
                self._parts[tp] = _Partition(tp.topic, tp.partition, generation)
                fresh[tp] = (start, ends.get(tp, UNKNOWN_END))
        if fresh:
            task = asyncio.ensure_future(self._claim(fresh))
            task.add_done_callback(_log_failure)

    async def _claim(self, bounds: dict[Hashable, tuple[int, int]]) -> None:
        parts = [(tp, self._parts[tp]) for tp in bounds]
        rows = await self._write(
            CLAIM,
            self._owner,
            [p.topic for _, p in parts],
            [p.partition for _, p in parts],
            [start for start, _ in bounds.values()],
            [end for _, end in bounds.values()],
        )
        by_key = {(p.topic, p.partition): p for _, p in parts}
        for topic, partition, offset, crashes in rows:
            by_key[(topic, partition)].suspects[offset] = crashes
        for _, part in parts:
            part.claimed = True
            part.notify()
        suspects = sum(len(p.suspects) for _, p in parts)
        if suspects:
            log.warning("crashguard.suspects", partitions=len(parts), suspects=suspects)

    async def release(self, tps: Iterable[Any] | None = None) -> None:
        """A clean revoke or shutdown: nothing of these partitions runs any more."""
        chosen = list(
            self._parts.items() if tps is None else ((tp, self._parts.get(tp)) for tp in tps)
        )
        parts = [(tp, p) for tp, p in chosen if p is not None]
        for tp, _ in parts:
            self._parts.pop(tp, None)
        if parts and self._conn is not None:
            await self._write(
                RELEASE, self._owner, [p.topic for _, p in parts], [p.partition for _, p in parts]
            )

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
        crashes = part.suspects.get(offset)
        if crashes is not None:
            await self.isolation.exclusive()
            try:
                await self._isolate(part, offset)
            except BaseException:
                self.isolation.release_exclusive()
                raise
            return Entry(tp, offset, crashes, alone=True)
        await self.isolation.shared()
        try:
            while offset > part.reserved:
                if part.lost or self._parts.get(tp) is not part:
                    raise asyncio.CancelledError
                if part.requested < offset + part.window // 2:
                    self._request(tp, part, offset)
                await part.changed.wait()
        except BaseException:
            self.isolation.release_shared()
            raise
        return SHARED

    async def leave_alone(self, entry: Entry, finished: bool) -> None:
        """A suspect's run is over (``finished``: it will not run again); others may run."""
        part = self._parts.get(entry.tp)
        if finished and part is not None:
            part.suspects.pop(entry.offset, None)
            self._forget.add((part.topic, part.partition, entry.offset))
        try:
            if not self.isolation.exclusive_waiting:  # the next suspect's write replaces ours
                await self._isolate(None, -1)
        finally:
            self.isolation.release_exclusive()

    # -- writes ----------------------------------------------------------------------------

    async def _isolate(self, part: _Partition | None, offset: int) -> None:
        for other in self._parts.values():  # every reservation is dropped
            other.reserved = other.requested = -1
        forget = list(self._forget)
        self._forget.clear()
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
            wanted, self._reserve = self._reserve, {}
            parts = {tp: p for tp in wanted if (p := self._parts.get(tp)) is not None}
            if self.isolation.exclusive_held:
                for part in parts.values():  # nothing runs beside a suspect: ask again later
                    part.requested = part.reserved
                continue
            if not parts:
                continue
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
                    part.lost = True  # another worker owns it now
                else:
                    part.reserved = max(part.reserved, reserved)
                part.notify()

    async def _write(self, sql: str, *args: Any, fetch: bool = True) -> list[Any]:
        """Run one statement, waiting out an outage (jobs wait for it; nothing is skipped)."""
        failures = 0
        while True:
            try:
                async with self._lock:
                    conn = self._conn
                    if conn is None or conn.is_closed():
                        conn = self._conn = await self._connect()
                    if fetch:
                        return list(await conn.fetch(sql, self._group, *args))
                    await conn.execute(sql, self._group, *args)
                    return []
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                failures += 1
                wait_s = dependency_wait_s(failures)
                log.warning("crashguard.write_failed", error=repr(exc)[:300], delay_s=wait_s)
                await asyncio.sleep(wait_s)


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("crashguard.claim_failed", error=repr(task.exception())[:300])
