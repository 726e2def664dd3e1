"""Key-ordered concurrency through the real worker: 2,000 jobs over 50 keys at concurrency 8.

Half the jobs share one key ("hot"); the rest are spread over 49 others.
Each probe job sleeps 0-20 ms and logs when it started and ended
(``probe.ran``, with the partition and offset the runner binds). Per key,
the jobs must start in offset order and never overlap; and the hot key must
not keep the others from the slots: while their jobs remain, all 8 are used.

Figures (-s): the mean number of jobs running while the other keys still
had jobs to start, and the peak.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from typing import Any

import asyncpg
import pytest

from schemas.envelope import JobEnvelope
from tests.support.probe import PROBE_ENV, probe_jobs, wait_done
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e

JOBS, KEYS, CONCURRENCY = 2000, 50, 8
HOT = b"hot"
ENV = {
    **PROBE_ENV,
    "CONVEYOR_JOBS__PROBE__CONCURRENCY": str(CONCURRENCY),
    "CONVEYOR_JOBS__PROBE__ORDERING": "key",
}


def keys_for(jobs: list[JobEnvelope], seed: int = 12) -> list[bytes]:
    rnd = random.Random(seed)
    return [HOT if rnd.random() < 0.5 else f"k{rnd.randrange(KEYS - 1):02d}".encode() for _ in jobs]


def mean_concurrency(runs: list[dict[str, Any]], until: float) -> tuple[float, int]:
    """Time-weighted mean of the jobs running from the first start to ``until``; the peak."""
    edges = sorted(
        [(r["started_at"], 1) for r in runs] + [(r["ended_at"], -1) for r in runs],
        key=lambda e: (e[0], e[1]),  # an end before a start at the same instant
    )
    start = edges[0][0]
    running = peak = 0
    area, last = 0.0, start
    for at, step in edges:
        if at > until:
            area += running * (until - last)
            last = until
            break
        area += running * (at - last)
        last = at
        running += step
        peak = max(peak, running)
    return area / max(last - start, 1e-9), peak


async def test_two_thousand_jobs_over_fifty_keys_start_in_order_and_fill_the_slots(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any
) -> None:
    jobs = probe_jobs(JOBS, max_sleep_ms=20, seed=12, trace=True)
    keys = keys_for(jobs)
    key_of = {job.id: key for job, key in zip(jobs, keys, strict=True)}
    stack.publish(jobs, keys=keys)  # all waiting before the worker starts
    worker = worker_factory(stack, **ENV)
    worker.wait_ready()
    final = await wait_done(db, jobs, timeout_s=180)
    assert final.total == JOBS and final.duplicated == 0
    worker.stop()

    runs = [e for e in worker.events if e.get("event") == "probe.ran"]
    assert len(runs) == JOBS, "each job ran once"
    per_key: dict[bytes, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        per_key[key_of[run["job_id"]]].append(run)
    assert len(per_key) == KEYS
    for key, key_runs in per_key.items():
        assert len({r["partition"] for r in key_runs}) == 1, "a key lives in one partition"
        by_offset = sorted(key_runs, key=lambda r: r["offset"])
        for before, after in itertools.pairwise(by_offset):
            assert after["started_at"] >= before["ended_at"], (
                f"key {key!r}: offset {after['offset']} started before {before['offset']} ended"
            )

    others = sorted(r["started_at"] for r in runs if key_of[r["job_id"]] != HOT)
    until = others[int(0.9 * len(others))]  # while the other keys had jobs left to start
    mean, peak = mean_concurrency(runs, until)
    hot = sorted(per_key[HOT], key=lambda r: r["started_at"])
    print(
        f"\n[key-order] jobs={JOBS} keys={KEYS} hot_key_jobs={len(hot)} "
        f"concurrency={CONCURRENCY} mean_running_while_others_waited={mean:.2f} peak={peak} "
        f"others_90pct_started_s={until - min(r['started_at'] for r in runs):.1f} "
        f"hot_key_done_s={hot[-1]['ended_at'] - hot[0]['started_at']:.1f}"
    )
    assert peak == CONCURRENCY
    # One slot for the hot key, never more, and the others take the other 7.
    # A pool whose records wait for their key inside a slot leaves most slots
    # idle behind the hot key (in tests/unit/test_pool_ordering.py: down to 1).
    assert mean >= 6.5, f"slots left idle while other keys waited: mean {mean:.2f}"
