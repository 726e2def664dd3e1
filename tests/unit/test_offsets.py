from __future__ import annotations

from streams.offsets import GAP_GRACE_S, GAP_SEEKS, OffsetTracker, Ticket

TP = ("jobs", 0)
OTHER = ("jobs", 1)


def tracker(at: int = 0) -> OffsetTracker[tuple[str, int]]:
    """A tracker whose partitions both start at offset ``at``."""
    t: OffsetTracker[tuple[str, int]] = OffsetTracker()
    t.assign([TP, OTHER])
    t.set_positions({TP: at, OTHER: at})
    return t


def start(t: OffsetTracker[tuple[str, int]], tp: tuple[str, int], offset: int) -> Ticket:
    ticket = t.start(tp, offset)
    assert ticket is not None
    return ticket


def test_nothing_started_nothing_to_commit() -> None:
    assert tracker().committable(TP) is None


def test_out_of_order_completion_commits_only_the_contiguous_run() -> None:
    t = tracker(at=10)
    tickets = [start(t, TP, o) for o in range(10, 15)]
    tickets[2].finish()
    tickets[4].finish()
    assert t.committable(TP) is None  # offset 10 is still running
    tickets[0].finish()
    assert t.committable(TP) == 11
    tickets[1].finish()
    assert t.committable(TP) == 13
    tickets[3].finish()
    assert t.committable(TP) == 15


def test_the_head_of_a_fresh_partition_in_flight_blocks_everything() -> None:
    # faust-streaming #606: later offsets finishing first must not be committed.
    t = tracker()
    head = start(t, TP, 0)
    for o in range(1, 8):
        start(t, TP, o).finish()
    assert t.committable(TP) is None
    head.finish()
    assert t.committable(TP) == 8


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_records_the_transport_skipped_are_sought_back_not_committed_past() -> None:
    seeks: list[tuple[tuple[str, int], int]] = []
    clock = Clock()
    t: OffsetTracker[tuple[str, int]] = OffsetTracker(
        on_gap=lambda tp, off: seeks.append((tp, off)), clock=clock
    )
    t.assign([TP])
    t.set_positions({TP: 235})
    assert t.start(TP, 559) is None, "a record past a hole is refused"
    assert seeks == [(TP, 235)]
    assert t.start(TP, 560) is None
    assert seeks == [(TP, 235)], "one seek per hole while it is under way"
    assert t.committable(TP) is None
    for offset in range(235, 240):  # the seek brings the skipped records back
        start(t, TP, offset).finish()
    assert t.committable(TP) == 240
    assert t.start(TP, 238) is None, "an offset already started is not run twice"


def test_a_real_gap_is_accepted_after_repeated_seeks() -> None:
    seeks: list[int] = []
    clock = Clock()
    t: OffsetTracker[tuple[str, int]] = OffsetTracker(
        on_gap=lambda tp, off: seeks.append(off), clock=clock
    )
    t.assign([TP])
    t.set_positions({TP: 3})
    start(t, TP, 3).finish()
    for _ in range(GAP_SEEKS):
        assert t.start(TP, 7) is None
        clock.now += GAP_GRACE_S + 0.1
    assert seeks == [4] * GAP_SEEKS
    start(t, TP, 7).finish()  # offsets 4-6 never existed (e.g. transaction markers)
    assert t.committable(TP) == 8


def test_a_cancelled_job_is_never_committed_past() -> None:
    t = tracker()
    start(t, TP, 0).finish()
    start(t, TP, 1)  # cancelled: never finished
    start(t, TP, 2).finish()
    assert t.committable(TP) == 1


def test_committed_offsets_are_not_offered_again() -> None:
    t = tracker()
    start(t, TP, 0).finish()
    t.mark_committed({TP: 1})
    assert t.committable(TP) is None
    assert t.all_committable() == {}
    start(t, TP, 1).finish()
    assert t.all_committable() == {TP: 2}


def test_revoke_stops_new_starts_but_counts_running_jobs_that_finish() -> None:
    t = tracker(at=5)
    start(t, TP, 5).finish()
    running = start(t, TP, 6)
    t.revoke([TP])
    assert running.revoked
    assert t.start(TP, 7) is None, "nothing new starts on a revoked partition"
    running.finish()
    assert t.committable(TP) == 7, "work that finished during the revoke is committed"
    t.forget([TP])
    assert t.committable(TP) is None
    assert TP not in list(t.partitions())


def test_unassigned_partitions_never_start() -> None:
    t = tracker()
    assert t.start(("elsewhere", 0), 1) is None


def test_reassignment_starts_fresh() -> None:
    t = tracker(at=5)
    stale = start(t, TP, 5)
    t.assign([TP])
    t.set_positions({TP: 3})
    stale.finish()
    assert t.committable(TP) is None
    start(t, TP, 3).finish()
    assert t.committable(TP) == 4


def test_nothing_starts_before_the_partitions_start_is_known() -> None:
    t: OffsetTracker[tuple[str, int]] = OffsetTracker()
    t.assign([TP])
    assert t.start(TP, 864) is None, "the first record seen is not the partition's start"
    t.set_positions({TP: 0})
    start(t, TP, 0).finish()
    assert t.committable(TP) == 1


def test_a_stale_record_past_the_start_is_a_gap_not_the_start() -> None:
    # A record fetched before a rebalance and delivered after it, on a
    # partition with no committed offset: the start (0) comes from the
    # consumer, so offset 864 is refused and a seek back to 0 requested.
    seeks: list[int] = []
    t: OffsetTracker[tuple[str, int]] = OffsetTracker(on_gap=lambda tp, off: seeks.append(off))
    t.assign([TP])
    t.set_positions({TP: 0})
    assert t.start(TP, 864) is None
    assert seeks == [0]
    for offset in range(3):
        start(t, TP, offset).finish()
    assert t.committable(TP) == 3


def test_partitions_are_independent() -> None:
    t = tracker()
    other = OTHER
    start(t, TP, 0)
    start(t, other, 0).finish()
    assert t.all_committable() == {other: 1}
    assert t.pending(TP) == 1 and t.pending(other) == 0
