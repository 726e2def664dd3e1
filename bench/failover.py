"""How long a SIGKILLed worker's partitions stay idle before another member consumes them.

Two workers share a consumer group while probe jobs arrive at a steady rate
on every partition. Worker A is SIGKILLed; the figure is the time from the
kill to the start of the first job the surviving worker B runs on a
partition that was A's (and, beside it, to B's assignment of those
partitions). A killed
member says nothing, so the group waits for its session to expire
(``kafka.session_timeout_s``), B learns of the rebalance at its next
heartbeat (``kafka.heartbeat_interval_s``), revokes, rejoins and resumes.

Each configuration (session:heartbeat, in seconds) runs ``--rounds`` kills
with its own topics and group, in the same run; the first is the baseline
the others are compared with.

    eval "$(scripts/services env)"
    .venv/bin/python -m bench.failover [--configs 30:3,10:3] [--rounds 3] [--rate 100] [--job-ms 5]

With jobs longer than a moment (``--job-ms``), the survivor's revoke also
waits for its own running jobs, up to ``worker.rebalance_drain_timeout_s``,
before it rejoins: that adds to the idle time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from schemas.envelope import JobEnvelope  # noqa: E402
from streams.commands.migrate import migrate  # noqa: E402
from tests.support.stack import Stack  # noqa: E402
from tests.support.worker import WorkerProcess  # noqa: E402

WAIT_S = 180.0


def when(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


class Load(threading.Thread):
    """Probe jobs (no database write) at ``rate`` per second, spread over the partitions."""

    def __init__(self, stack: Stack, rate: float, job_ms: int) -> None:
        super().__init__(daemon=True)
        self.stack, self.rate, self.job_ms = stack, rate, job_ms
        self.stopped = threading.Event()

    def run(self) -> None:
        producer = self.stack.producer()
        topic = self.stack.registry().topic_for("probe")
        started, sent = time.monotonic(), 0
        while not self.stopped.is_set():
            due = int((time.monotonic() - started) * self.rate) - sent
            for _ in range(due):
                job = JobEnvelope(type="probe", payload={"sleep_ms": self.job_ms, "record": False})
                producer.produce(topic, job.to_bytes(), str(random.random()).encode())
            sent += due
            producer.poll(0)
            self.stopped.wait(0.05)
        producer.flush(10)


def assigned(worker: WorkerProcess, topic: str, after: float) -> set[str] | None:
    """The probe partitions of the worker's latest assignment made after ``after``."""
    for event in reversed(list(worker.events)):
        if event.get("event") == "worker.partitions_assigned" and when(event) > after:
            return {tp for tp in event["assigned"] if tp.rsplit(":", 1)[0] == topic}
    return None


def one_kill(
    stack: Stack, env: dict[str, str], survivor: WorkerProcess, logs: Path
) -> tuple[float, float]:
    """Start A, kill it once both consume; seconds to (assignment, first job) on its partitions."""
    topic = stack.registry().topic_for("probe")
    started = time.time()
    victim = WorkerProcess({**stack.env, **env}, logs / f"a-{started:.0f}.log").start()
    victim.wait_ready(timeout_s=WAIT_S)
    survivor.wait_for(
        lambda e: e.get("event") == "worker.partitions_assigned" and when(e) > started, WAIT_S
    )
    victim.wait_for(lambda e: e.get("event") == "job.succeeded", WAIT_S)
    theirs = assigned(victim, topic, started)
    assert theirs, "the victim got no probe partition"
    time.sleep(2.0)  # a steady state: both members consuming
    victim.signal(signal.SIGKILL)
    killed = time.time()
    victim.wait_exit(timeout_s=10)
    reassigned = survivor.wait_for(
        lambda e: (
            e.get("event") == "worker.partitions_assigned"
            and when(e) > killed
            and theirs <= set(e["assigned"])
        ),
        WAIT_S,
    )
    first = survivor.wait_for(
        lambda e: (
            e.get("event") == "job.succeeded"
            and when(e) > killed
            and f"{e.get('topic')}:{e.get('partition')}" in theirs
        ),
        WAIT_S,
    )
    return when(reassigned) - killed, when(first) - first["duration_s"] - killed


def run_config(
    bootstrap: str,
    dsn: str,
    session_s: float,
    heartbeat_s: float,
    rounds: int,
    rate: float,
    job_ms: int,
    logs: Path,
) -> list[tuple[float, float]]:
    env = {
        "CONVEYOR_JOBS__PROBE__ENABLED": "true",
        "CONVEYOR_JOBS__PROBE__CONCURRENCY": "8",
        "CONVEYOR_DLQ_MIRROR__ENABLED": "false",
        "CONVEYOR_KAFKA__SESSION_TIMEOUT_S": str(session_s),
        "CONVEYOR_KAFKA__HEARTBEAT_INTERVAL_S": str(heartbeat_s),
    }
    stack = Stack(bootstrap, dsn, extra=env)
    stack.create_topics()
    load = Load(stack, rate, job_ms)
    load.start()
    survivor = WorkerProcess({**stack.env, **env}, logs / f"b-{stack.prefix}.log").start()
    results = []
    try:
        survivor.wait_ready(timeout_s=WAIT_S)
        for _ in range(rounds):
            results.append(one_kill(stack, env, survivor, logs))
            print(
                f"  session {session_s:g} s, heartbeat {heartbeat_s:g} s: reassigned after "
                f"{results[-1][0]:.1f} s, first job after {results[-1][1]:.1f} s",
                flush=True,
            )
    finally:
        load.stopped.set()
        survivor.stop()
        load.join(timeout=15)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="30:3,10:3", help="session:heartbeat seconds, ...")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--rate", type=float, default=100, help="probe jobs per second (below what one worker does)"
    )
    parser.add_argument("--job-ms", type=int, default=5, help="how long each job runs")
    args = parser.parse_args()
    bootstrap = os.environ.get("CONVEYOR_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    dsn = os.environ.get(
        "CONVEYOR_POSTGRES__DSN", "postgresql://conveyor:conveyor@127.0.0.1:5432/conveyor"
    )
    asyncio.run(migrate(dsn))
    logs = Path(tempfile.mkdtemp(prefix="conveyor-failover-"))
    configs = [tuple(float(x) for x in c.split(":")) for c in args.configs.split(",")]
    figures = {}
    for session_s, heartbeat_s in configs:
        figures[(session_s, heartbeat_s)] = run_config(
            bootstrap, dsn, session_s, heartbeat_s, args.rounds, args.rate, args.job_ms, logs
        )
    print(
        f"\nidle partitions after a SIGKILL, {args.rounds} kills each, jobs of {args.job_ms} ms"
        f" (s; logs in {logs}):"
    )
    header = f"{'reassigned (median)':>20s} {'first job min/median/max':>28s}"
    print(f"  {'session:heartbeat':18s} {header}")
    baseline = None
    for (session_s, heartbeat_s), rows in figures.items():
        reassigned = statistics.median(r[0] for r in rows)
        firsts = [r[1] for r in rows]
        median = statistics.median(firsts)
        baseline = baseline or median
        print(
            f"  {f'{session_s:g}:{heartbeat_s:g}':18s} {reassigned:20.1f} "
            f"{min(firsts):8.1f} / {median:5.1f} / {max(firsts):5.1f}   "
            f"x{median / baseline:.2f} of the baseline"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
