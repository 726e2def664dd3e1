from __future__ import annotations

from streams.offsets import OffsetTracker

TP = ("jobs", 0)


def test_nothing_started_nothing_to_commit() -> None:
    assert OffsetTracker[tuple[str, int]]().committable(TP) is None


def test_out_of_order_completion_commits_only_the_contiguous_run() -> None:
    t: OffsetTracker[tuple[str, int]] = OffsetTracker()
    tickets = [t.start(TP, o) for o in range(10, 15)]
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
    t: OffsetTracker[tuple[str, int]] = OffsetTracker()
    head = t.start(TP, 0)
    for o in range(1, 8):
        t.start(TP, o).finish()
    assert t.committable(TP) is None
    head.finish()
    assert t.committable(TP) == 8


def test_gaps_in_offsets_are_fine() -> None:
    t: OffsetTracker[tuple[str, int]] = OffsetTracker()
    for o in (3, 7, 20):
        t.start(TP, o).finish()
    assert t.committable(TP) == 21


def test_a_cancelled_job_is_never_committed_past() -> None:
    t: OffsetTracker[tuple[str, int]] = OffsetTracker()
    t.start(TP, 0).finish()
    t.start(TP, 1)  # cancelled: never finished
    t.start(TP, 2).finish()
    assert t.committable(TP) == 1


def test_committed_offsets_are_not_offered_again() -> None:
    t: OffsetTracker[tuple[str, int]] = OffsetTracker()
    t.start(TP, 0).finish()
    t.mark_committed({TP: 1})
    assert t.committable(TP) is None
    assert t.all_committable() == {}
    t.start(TP, 1).finish()
    assert t.all_committable() == {TP: 2}


def test_revoke_forgets_and_late_finishes_are_harmless() -> None:
    t: OffsetTracker[tuple[str, int]] = OffsetTracker()
    ticket = t.start(TP, 5)
    t.forget([TP])
    assert ticket.revoked
    ticket.finish()
    assert t.committable(TP) is None
    assert list(t.partitions()) == []
    t.start(TP, 9).finish()  # reassigned later: starts fresh
    assert t.committable(TP) == 10


def test_partitions_are_independent() -> None:
    t: OffsetTracker[tuple[str, int]] = OffsetTracker()
    other = ("jobs", 1)
    t.start(TP, 0)
    t.start(other, 0).finish()
    assert t.all_committable() == {other: 1}
    assert t.pending(TP) == 1 and t.pending(other) == 0
