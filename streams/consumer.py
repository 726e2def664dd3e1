"""Faust's aiokafka consumer, with commits decided by Conveyor's offset tracker.

Overrides (see docs/RELIABILITY.md for why each is needed):

- ``_filter_tps_with_pending_acks`` / ``_new_offset`` / ``_should_commit``:
  the offsets to commit come from :class:`streams.offsets.OffsetTracker`,
  never from Faust's acks (which include failed and cancelled events).
- ``_commit_offsets``: the tracker learns an offset is committed only when
  the broker accepted the commit.
- ``on_partitions_revoked``: finished work of revoked partitions is
  committed *before* Faust forgets their offsets (faust-streaming #502).
- ``_drain_messages``: each record is delivered with a direct ``await``
  instead of Faust's per-record ``wait_first`` race against a suspended flow
  (two tasks per record, and an abandoned delivery whose offset is skipped).
- ``perform_seek``: where the consumer starts each partition (its committed
  offset, else the log start, sought explicitly) becomes the tracker's first
  expected offset, so records Faust skips are noticed and a stale record is
  never taken for a partition's start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import structlog
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.offsets import OffsetTracker

log = structlog.get_logger(__name__)

YIELD_EVERY = 100


class ConsumerHooks(Protocol):
    """What the consumer needs from the worker (``streams.lifecycle.Conveyor``)."""

    tracker: OffsetTracker[Any]
    joined: bool

    async def on_revoke(self, revoked: set[Any]) -> None: ...

    def on_starts(self, starts: dict[Any, int], ends: dict[Any, int]) -> None: ...


class TrackedConsumer(faust_aiokafka.Consumer):
    """Commits the end of each partition's run of finished offsets, nothing more."""

    def __init__(self, *args: Any, hooks: ConsumerHooks, **kwargs: Any) -> None:
        self._conveyor = hooks
        super().__init__(*args, **kwargs)

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[Any]:
        for tp in self._conveyor.tracker.partitions():
            if topics is None or tp in topics or tp.topic in topics:
                yield tp

    def _new_offset(self, tp: Any) -> int | None:
        return self._conveyor.tracker.committable(tp)

    def _should_commit(self, tp: Any, offset: int) -> bool:
        return True  # the tracker only offers offsets beyond the last successful commit

    async def _commit_offsets(
        self, offsets: Mapping[Any, int], start_new_transaction: bool = True
    ) -> bool:
        assignment = self.assignment()
        did_commit: bool = await super()._commit_offsets(offsets, start_new_transaction)
        if did_commit:
            self._conveyor.tracker.mark_committed(
                {tp: off for tp, off in offsets.items() if tp in assignment}
            )
        return did_commit

    async def on_partitions_assigned(self, assigned: set[Any], generation_id: int = 0) -> None:
        self._conveyor.tracker.assign(assigned)
        await super().on_partitions_assigned(assigned, generation_id)
        self._conveyor.joined = True
        log.info(
            "worker.partitions_assigned",
            partitions=len(assigned),
            generation=generation_id,
            assigned=sorted(f"{tp.topic}:{tp.partition}" for tp in assigned)[:200],
        )

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust's delivery loop, without the two parts that hurt here.

        Faust wraps each delivery in ``wait_first(callback, suspend_flow)``:
        two tasks per message, and a delivery abandoned mid-way when a
        rebalance suspends the flow while its read offset still moves on (a
        silently skipped record). It also drops records below a read offset
        that a racing delivery can restore after a rebalance. Here each record
        is delivered in full (the callback waits out a suspended flow); the
        offset tracker refuses duplicates and seeks back over gaps itself.
        """
        callback = self.callback
        consumer_stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        delivered = 0
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                await asyncio.sleep(0)
                if self.should_stop:
                    break
                async for _tp, message in self.getmany(timeout=1.0):
                    await callback(message)
                    delivered += 1
                    if delivered % YIELD_EVERY == 0:
                        await asyncio.sleep(0)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        except Exception as exc:
            log.error("worker.delivery_failed", error=repr(exc)[:500])
            raise

    async def perform_seek(self) -> None:
        """Seek to the committed offsets, and tell the tracker where each partition starts.

        aiokafka's ``seek_to_committed`` only seeks to a committed offset above
        0, and Faust records a committed 0 as "none". A partition with nothing
        (or 0) committed would keep whatever position its fetcher reached —
        past records Faust fetched and dropped while the flow was stopped —
        and its first record seen would become its start. And a committed
        offset outside the log (below its start after retention, past its end
        after a truncation or a re-created topic) is reset by the consumer to
        the log start. So every partition's start is decided here
        (``start_positions``), sought explicitly where it is not the committed
        offset, and told to the tracker.
        """
        await super().perform_seek()
        await self._seek_starts()

    async def _seek_starts(self) -> None:
        assignment = self.assignment()
        if not assignment:
            self._conveyor.on_starts({}, {})
            return
        committed = {tp: self._committed_offset.get(tp) for tp in assignment}
        earliest = await self.earliest_offsets(*assignment)
        ends = dict(await self.highwaters(*assignment))
        starts, moved = start_positions(committed, earliest, ends)
        if moved:
            await self.seek_on_consumer_thread(moved)
        self._conveyor.on_starts(starts, ends)

    async def seek_on_consumer_thread(self, offsets: Mapping[Any, int]) -> None:
        """Seek partitions on aiokafka's own thread and loop (it is not thread-safe).

        Faust's ``seek()`` calls aiokafka from this (the main) thread, where it
        can race the fetcher, which may then overwrite the new position.
        Partitions no longer assigned when the seek runs are left alone.
        """
        thread = self._thread
        consumer = thread._ensure_consumer()

        async def seek() -> None:
            assigned = consumer.assignment()
            for tp, offset in offsets.items():
                if tp in assigned:
                    consumer.seek(tp, offset)

        await thread.call_thread(seek)

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        await self._conveyor.on_revoke(set(revoked))
        await super().on_partitions_revoked(revoked)


def start_positions(
    committed: Mapping[Any, int | None],
    earliest: Mapping[Any, int | None],
    ends: Mapping[Any, int],
) -> tuple[dict[Any, int], dict[Any, int]]:
    """(where each partition starts, the partitions to seek there) at an assignment.

    The committed offset when the log holds it (its end included: nothing
    new yet); else the log start — where the consumer itself resets a
    committed offset out of range (``auto_offset_reset`` is earliest) — for a
    partition with nothing (or 0) committed, one whose records below the
    commit were deleted by retention, and one whose log now ends before the
    commit (truncated, or the topic re-created).
    """
    starts: dict[Any, int] = {}
    moved: dict[Any, int] = {}
    for tp, offset in committed.items():
        low = earliest.get(tp) or 0
        high = ends.get(tp)
        if offset is not None and low <= offset and (high is None or offset <= high):
            starts[tp] = offset
            continue
        if offset is not None:
            log.warning(
                "offsets.committed_out_of_range",
                partition=f"{tp.topic}:{tp.partition}",
                committed=offset,
                log_start=low,
                log_end=high,
            )
        starts[tp] = moved[tp] = low
    return starts, moved


class IdempotentProducer(faust_aiokafka.Producer):
    """Faust's aiokafka producer, idempotent: a batch resent after a lost answer is
    written once (retry and dead-letter records are never doubled by the client)."""

    def _settings_extra(self) -> Mapping[str, Any]:
        return {"acks": "all", "enable_idempotence": True}


class TrackedTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport: a TrackedConsumer given ``hooks``, an idempotent producer."""

    Consumer = TrackedConsumer
    Producer = IdempotentProducer

    def __init__(self, *args: Any, hooks: ConsumerHooks, **kwargs: Any) -> None:
        self._hooks = hooks
        super().__init__(*args, **kwargs)

    def create_consumer(self, callback: Any, **kwargs: Any) -> TrackedConsumer:
        return TrackedConsumer(self, callback=callback, loop=self.loop, hooks=self._hooks, **kwargs)
