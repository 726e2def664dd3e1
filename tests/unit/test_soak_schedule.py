"""The compound-fault soak's schedule: a pure function of the seed, every kind, overlaps."""

from __future__ import annotations

from tests.support.soak_schedule import (
    KINDS,
    MAX_WORKERS,
    MIN_WORKERS,
    REQUIRED,
    START_WORKERS,
    WORKER_KINDS,
    Fault,
    make_schedule,
    overlapping_pairs,
)


def test_a_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    assert make_schedule(7, 60) == make_schedule(7, 60)
    assert make_schedule(7, 60) != make_schedule(8, 60)


def test_the_short_run_injects_every_required_kind_with_compound_faults() -> None:
    for seed in range(1, 30):
        faults = make_schedule(seed, 60, time_scale=0.6)
        assert {f.kind for f in faults} >= set(REQUIRED), seed
        assert overlapping_pairs(faults) >= 1, seed  # two faults at once
        assert max(f.ends_s for f in faults) < 120, seed  # bounded


def test_the_long_run_fills_its_window_with_every_kind() -> None:
    faults = make_schedule(3, 1200)
    assert {f.kind for f in faults} == set(KINDS)
    assert 1150 < max(f.ends_s for f in faults) < 1300
    assert overlapping_pairs(faults) >= 20


def test_scaling_keeps_the_fleet_within_its_bounds_and_durations_in_their_ranges() -> None:
    for seed in range(50):
        size = START_WORKERS
        for fault in make_schedule(seed, 600):
            size += {"scale_up": 1, "scale_down": -1}.get(fault.kind, 0)
            assert MIN_WORKERS <= size <= MAX_WORKERS, (seed, fault)
            low, high = KINDS[fault.kind]
            assert low <= fault.duration_s <= high, fault
            assert (fault.duration_s == 0) == (fault.kind in WORKER_KINDS)
            assert 0 <= fault.pick < 1


def test_overlapping_pairs_counts_instant_faults_inside_lasting_ones() -> None:
    outage = Fault(10, "pg_outage", 5)
    assert overlapping_pairs([outage, Fault(12, "sigkill", 0)]) == 1
    assert overlapping_pairs([outage, Fault(16, "sigkill", 0)]) == 0
    assert overlapping_pairs([outage, Fault(14, "kafka_latency", 10)]) == 1
