"""Chaos under load: workers SIGKILLed, SIGTERMed, joining and leaving, jobs failing on purpose.

The probe jobs belong to three organizations, one with most of them, and the
job type runs with fair share on and a small read-ahead (50 records): much
of the big organization's work is set aside to the deferred topic and read
back while workers die and rebalance (streams/fairness.py).

Every round publishes a batch of jobs (most succeed, some fail once and
succeed on a retry, some fail permanently), waits until about half of it is
done, then does one seeded random thing to the consumer group. At the end
every good job's effect exists exactly once and every bad job is in the
dead-letter table. `make test` runs a short version; `make soak`
(``CONVEYOR_SOAK=1``) runs many more, larger rounds.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from collections import Counter
from typing import Any

import asyncpg
import pytest

from schemas.envelope import JobEnvelope
from streams.settings import Settings
from tests.support.dlq import dlq_rows
from tests.support.probe import PROBE_ENV, probe_jobs, wait_done
from tests.support.stack import Stack
from tests.support.waiting import eventually
from tests.support.worker import WorkerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.soak]

SOAK = os.environ.get("CONVEYOR_SOAK") == "1"
ROUNDS = 20 if SOAK else 6
PER_ROUND = 1000 if SOAK else 300
SEED = int(os.environ.get("CONVEYOR_CHAOS_SEED", "7"))
# aiokafka's words when the group dropped a member that was alive: the broker no
# longer knows it, or it went a whole session without a heartbeat answered.
SPURIOUS = re.compile(
    r"member_id was not recognized|Heartbeat session expired|generation id is not\s+current"
)
DRAIN_TIMEOUT_S = 10
ENV = {
    **PROBE_ENV,
    "CONVEYOR_JOBS__PROBE__CONCURRENCY": "8",
    "CONVEYOR_JOBS__PROBE__MAX_ATTEMPTS": "3",
    "CONVEYOR_JOBS__PROBE__BACKOFF_BASE_S": "0.05",
    "CONVEYOR_JOBS__PROBE__BACKOFF_MAX_S": "0.2",
    "CONVEYOR_WORKER__DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
    "CONVEYOR_JOBS__PROBE__FAIRNESS": "organization",
    "CONVEYOR_KAFKA__BACKLOG_RECORDS": "50",
}
ORGS = ("org-big",) * 8 + ("org-b", "org-c")


def round_jobs(n: int, seed: int) -> tuple[list[JobEnvelope], list[JobEnvelope]]:
    """(jobs that end with an effect, jobs that fail permanently) for one round."""
    bad_n = n // 20
    flaky_n = n // 10
    good = probe_jobs(n - bad_n - flaky_n, max_sleep_ms=40, seed=seed, organizations=ORGS)
    flaky = probe_jobs(
        flaky_n, max_sleep_ms=10, seed=seed, organizations=ORGS, fail="retryable", fail_times=1
    )
    bad = probe_jobs(bad_n, max_sleep_ms=10, seed=seed, organizations=ORGS, fail="permanent")
    return good + flaky, bad


class Group:
    """The live workers of the consumer group, and what was done to them."""

    def __init__(self, stack: Stack, factory: Any) -> None:
        self.stack = stack
        self.factory = factory
        self.live: list[WorkerProcess] = []
        self.started: list[WorkerProcess] = []
        self.actions: Counter[str] = Counter()

    def start(self) -> None:
        worker = self.factory(self.stack, **ENV)
        self.started.append(worker)
        worker.wait_ready(timeout_s=120)
        self.live.append(worker)

    def count(self, event: str) -> int:
        return sum(worker.count(event) for worker in self.started)

    def spurious_rebalances(self) -> list[str]:
        """Signs that a live member lost its place in the group (a heartbeat came too late)."""
        return [
            str(e.get("event"))[:120]
            for worker in self.started
            for e in worker.events
            if SPURIOUS.search(str(e.get("event", "")))
        ]

    def kill(self, rnd: random.Random) -> None:
        worker = self.live.pop(rnd.randrange(len(self.live)))
        worker.signal(signal.SIGKILL)
        assert worker.wait_exit(timeout_s=10) == -signal.SIGKILL

    def terminate(self, rnd: random.Random) -> float:
        worker = self.live.pop(rnd.randrange(len(self.live)))
        sent = time.monotonic()
        worker.signal(signal.SIGTERM)
        code = worker.wait_exit(timeout_s=DRAIN_TIMEOUT_S + 20)
        assert code == 0, worker.tail()
        return time.monotonic() - sent

    def act(self, rnd: random.Random) -> str:
        choices = ["kill", "terminate"]
        choices += ["join"] if len(self.live) < 3 else []
        choices += ["leave"] if len(self.live) > 1 else []
        action = rnd.choice(choices)
        if action == "kill":
            self.kill(rnd)
            self.start()
        elif action == "terminate":
            self.terminate(rnd)
            self.start()
        elif action == "join":
            self.start()
        else:
            self.terminate(rnd)
        self.actions[action] += 1
        return action


async def test_chaos_loses_nothing_and_applies_nothing_twice(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any
) -> None:
    rnd = random.Random(SEED)
    group = Group(stack, worker_factory)
    group.start()
    good: list[JobEnvelope] = []
    bad: list[JobEnvelope] = []
    started = time.monotonic()
    for round_no in range(ROUNDS):
        ok, failing = round_jobs(PER_ROUND, seed=SEED * 1000 + round_no)
        good += ok
        bad += failing
        batch = ok + failing
        rnd.shuffle(batch)
        stack.publish(batch)
        half = len(good) - len(ok) // 2
        await wait_done(db, good, half, timeout_s=180, what=f"half of round {round_no} done")
        group.act(rnd)

    final = await wait_done(db, good, timeout_s=300, what="every good job done")
    rows = await eventually(
        lambda: dlq_rows(db, stack),
        lambda r: {row["job_id"] for row in r} >= {j.id for j in bad},
        timeout_s=120,
        what="every bad job dead-lettered",
    )
    per_job = Counter(row["job_id"] for row in rows)
    print(
        f"\n[chaos] session_timeout_s={Settings().kafka.session_timeout_s:g} "
        f"rounds={ROUNDS} jobs={len(good) + len(bad)} good={len(good)} "
        f"effects={final.total} duplicates={final.duplicated} bad={len(bad)} "
        f"dead_letters={len(rows)} dead_lettered_twice={sum(c > 1 for c in per_job.values())} "
        f"actions={dict(group.actions)} set_aside_lines={group.count('job.set_aside')} "
        f"elapsed_s={time.monotonic() - started:.0f}"
    )
    assert final.total == len(good) and final.duplicated == 0
    assert set(per_job) == {j.id for j in bad}, "only the permanent failures are dead letters"
    # With the default session timeout (kafka.session_timeout_s): no live
    # worker was ever dropped from the group.
    assert not group.spurious_rebalances()
    assert all(row["stage"] == "handle" for row in rows)
