"""Faust's aiokafka consumer, with commits decided by Conveyor's offset tracker.

Overrides (see docs/RELIABILITY.md for why each is needed):

- ``_filter_tps_with_pending_acks`` / ``_new_offset`` / ``_should_commit``:
  the offsets to commit come from :class:`streams.offsets.OffsetTracker`,
  never from Faust's acks (which include failed and cancelled events).
- ``_commit_offsets``: the tracker learns an offset is committed only when
  the broker accepted the commit.
- ``on_partitions_revoked``: finished work of revoked partitions is
  committed *before* Faust forgets their offsets (faust-streaming #502).
- ``perform_seek``: the committed positions the consumer resumes from become
  the tracker's first expected offsets, so records Faust skips are noticed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import structlog
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.offsets import OffsetTracker

log = structlog.get_logger("conveyor.worker")


class RevokeHandler(Protocol):
    tracker: OffsetTracker[Any]

    async def on_revoke(self, revoked: set[Any]) -> None: ...


class TrackedConsumer(faust_aiokafka.Consumer):
    """Commits the end of each partition's run of finished offsets, nothing more."""

    @property
    def _conveyor(self) -> RevokeHandler:
        conveyor: RevokeHandler = self.app.conveyor  # type: ignore[attr-defined]
        return conveyor

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
        log.info(
            "worker.partitions_assigned",
            partitions=len(assigned),
            generation=generation_id,
            assigned=sorted(f"{tp.topic}:{tp.partition}" for tp in assigned)[:200],
        )

    async def perform_seek(self) -> None:
        await super().perform_seek()
        assignment = self.assignment()
        self._conveyor.tracker.set_positions(
            {
                tp: off
                for tp, off in self._committed_offset.items()
                if off is not None and tp in assignment
            }
        )

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        await self._conveyor.on_revoke(set(revoked))
        await super().on_partitions_revoked(revoked)


class TrackedTransport(faust_aiokafka.Transport):
    Consumer = TrackedConsumer
