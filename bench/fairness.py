"""Fair share between organizations: how long a small organization waits behind a big one.

One worker (concurrency 8) runs ``probe`` jobs of 50 ms. Organization A
publishes 3,000 jobs, then B publishes 20 and C 20. The figure is each
job's publish-to-start time (its envelope's ``created_at`` to the start the
probe logs with ``trace``), for B and C (p50, p95, max), and when A's last
job finished — with ``fairness: none`` and ``organization``, in the same run,
each on its own topics and group. Every job's effect is counted in
``probe_effects`` (0 lost, 0 twice). Then the same with three workers and
one SIGKILLed mid-way (fair share on), and a single organization's 3,000
jobs with fair share off and on (its throughput).

    eval "$(scripts/services env)"
    .venv/bin/python -m bench.fairness [--big 3000] [--small 20] [--job-ms 50] [--skip-kill]
        [--pairs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from schemas.envelope import JobEnvelope  # noqa: E402
from streams.commands.migrate import migrate  # noqa: E402
from tests.support.probe import effects  # noqa: E402
from tests.support.stack import Stack  # noqa: E402
from tests.support.waiting import eventually  # noqa: E402
from tests.support.worker import WorkerProcess  # noqa: E402

WAIT_S = 600.0


@dataclass
class Run:
    label: str
    starts: dict[str, float]  # B's and C's job id -> publish-to-start seconds
    a_last_end_s: float  # from the first publish
    lost: int
    twice: int


def jobs(org: str, n: int, job_ms: int) -> list[JobEnvelope]:
    return [
        JobEnvelope(
            id=f"{org}-{i}-{time.time_ns()}",
            type="probe",
            organization_id=org,
            payload={"sleep_ms": job_ms, "trace": True},
        )
        for i in range(n)
    ]


def publish(stack: Stack, envelopes: list[JobEnvelope]) -> dict[str, float]:
    """Publish; job id -> when it was produced (its envelope's created_at too)."""
    producer = stack.producer()
    topic = stack.registry().topic_for("probe")
    when = {}
    for env in envelopes:
        now = datetime.now(UTC)
        stamped = env.model_copy(update={"created_at": now})
        producer.produce(topic, stamped.to_bytes(), env.id.encode())
        when[env.id] = now.timestamp()
    assert producer.flush(30) == 0
    return when


def env(fairness: str) -> dict[str, str]:
    return {
        "CONVEYOR_JOBS__PROBE__ENABLED": "true",
        "CONVEYOR_JOBS__PROBE__CONCURRENCY": "8",
        "CONVEYOR_JOBS__PROBE__FAIRNESS": fairness,
        "CONVEYOR_DLQ_MIRROR__ENABLED": "false",
        "CONVEYOR_KAFKA__SESSION_TIMEOUT_S": "6",
    }


async def wait_all(db: asyncpg.Pool, everything: list[JobEnvelope]) -> None:
    await eventually(
        lambda: effects(db, everything),
        lambda c: c.distinct >= len(everything),
        timeout_s=WAIT_S,
        what="every job done",
    )


def ran(workers: list[WorkerProcess]) -> dict[str, tuple[float, float]]:
    """job id -> (started_at, ended_at) of its first logged run."""
    out: dict[str, tuple[float, float]] = {}
    for worker in workers:
        for e in worker.events:
            if e.get("event") == "probe.ran" and e.get("job_id") not in out:
                out[e["job_id"]] = (e["started_at"], e["ended_at"])
    return out


async def one_run(
    bootstrap: str, dsn: str, fairness: str, args: Any, logs: Path, *, workers_n: int, kill: bool
) -> Run:
    stack = Stack(bootstrap, dsn, extra=env(fairness))
    stack.create_topics()
    workers = [
        WorkerProcess({**stack.env, **env(fairness)}, logs / f"{stack.prefix}-{i}.log").start()
        for i in range(workers_n)
    ]
    db = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        for worker in workers:
            await asyncio.to_thread(worker.wait_ready, 180)
        big = jobs("org-a", args.big, args.job_ms)
        small = jobs("org-b", args.small, args.job_ms) + jobs("org-c", args.small, args.job_ms)
        first = time.time()
        published = await asyncio.to_thread(publish, stack, big)
        published |= await asyncio.to_thread(publish, stack, small)
        if kill:
            await eventually(
                lambda: effects(db, big),
                lambda c: c.distinct >= args.big // 3,
                timeout_s=WAIT_S,
                what="a third of A's jobs done",
            )
            workers[0].signal(signal.SIGKILL)
            await asyncio.to_thread(workers[0].wait_exit, 10)
        await wait_all(db, big + small)
        counted = await effects(db, big + small)
        runs = ran(workers)
        starts = {j.id: runs[j.id][0] - published[j.id] for j in small if j.id in runs}
        a_end = max(runs[j.id][1] for j in big if j.id in runs) - first
    finally:
        await db.close()
        for worker in workers:
            await asyncio.to_thread(worker.stop)
    return Run(
        f"fairness {fairness}, {workers_n} worker(s){', one SIGKILLed' if kill else ''}",
        starts,
        a_end,
        lost=len(big) + len(small) - counted.distinct,
        twice=counted.duplicated,
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def show(run: Run) -> None:
    waits = list(run.starts.values())
    print(
        f"  {run.label}: B and C publish-to-start p50 {statistics.median(waits):.2f} s, "
        f"p95 {percentile(waits, 0.95):.2f} s, max {max(waits):.2f} s; "
        f"A's last job done after {run.a_last_end_s:.1f} s; lost {run.lost}, twice {run.twice}",
        flush=True,
    )


async def throughput(bootstrap: str, dsn: str, fairness: str, args: Any, logs: Path) -> float:
    stack = Stack(bootstrap, dsn, extra=env(fairness))
    stack.create_topics()
    worker = WorkerProcess({**stack.env, **env(fairness)}, logs / f"{stack.prefix}.log").start()
    db = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        await asyncio.to_thread(worker.wait_ready, 180)
        only = jobs("org-a", args.big, args.job_ms)
        started = time.monotonic()
        await asyncio.to_thread(publish, stack, only)
        await wait_all(db, only)
        return len(only) / (time.monotonic() - started)
    finally:
        await db.close()
        await asyncio.to_thread(worker.stop)


async def main_async(args: Any) -> int:
    bootstrap = os.environ.get("CONVEYOR_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    dsn = os.environ.get(
        "CONVEYOR_POSTGRES__DSN", "postgresql://conveyor:conveyor@127.0.0.1:5432/conveyor"
    )
    await migrate(dsn)
    logs = Path(tempfile.mkdtemp(prefix="conveyor-fairness-"))
    print(f"A publishes {args.big} jobs of {args.job_ms} ms, then B and C {args.small} each")
    baseline = await one_run(bootstrap, dsn, "none", args, logs, workers_n=1, kill=False)
    show(baseline)
    fair = await one_run(bootstrap, dsn, "organization", args, logs, workers_n=1, kill=False)
    show(fair)
    print(
        f"  A's last job: x{fair.a_last_end_s / baseline.a_last_end_s:.3f} of its time "
        "without fair share"
    )
    if not args.skip_kill:
        show(await one_run(bootstrap, dsn, "organization", args, logs, workers_n=3, kill=True))
    ratios = []
    for pair in range(args.pairs):  # alternating, adjacent: the machine's drift cancels
        off = await throughput(bootstrap, dsn, "none", args, logs)
        on = await throughput(bootstrap, dsn, "organization", args, logs)
        ratios.append(on / off)
        print(
            f"  one organization's {args.big} jobs, pair {pair + 1}: {off:.1f} jobs/s without "
            f"fair share, {on:.1f} with (x{on / off:.3f})",
            flush=True,
        )
    print(f"  median ratio x{statistics.median(ratios):.3f}; logs in {logs}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", type=int, default=3000, help="organization A's jobs")
    parser.add_argument("--small", type=int, default=20, help="B's and C's jobs each")
    parser.add_argument("--job-ms", type=int, default=50)
    parser.add_argument("--skip-kill", action="store_true", help="leave out the 3-worker run")
    parser.add_argument(
        "--pairs", type=int, default=3, help="one organization alone: off/on pairs to run"
    )
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
