"""Takeover after a SIGKILL: how soon the worker that inherits the partitions is back to speed.

Issue 18's liveness target for the crash guard: a worker that takes over a
SIGKILLed worker's partitions is back to >= 80 % of its pre-kill throughput
within 30 s of getting them, and the worst publish-to-note delay of a
300-job ``message.send`` run with two SIGKILLs is <= 120 s. Two scenarios,
against the real worker (subprocesses), Kafka and Postgres (a scratch
database, dropped at the end), each with its baseline measured in the run:

- ``probe``: workers A and B (``probe`` at concurrency 8) share a group; a
  backlog of about ``--depth`` jobs of ``--job-ms`` each (``record=true``:
  each writes its effect row) is kept ahead of them. Once both consume in
  one generation (plus 5 s), and 15 s later, A is SIGKILLed. B's jobs per
  second (its ``job.succeeded`` lines) in those 15 s is the baseline; from
  B's assignment of A's partitions (the takeover) the figures are the time
  until a 5 s window (1 s steps) is back to >= 80 % of it and B's rate over
  the first 30 s as a ratio of it; also the records run alone
  (``job.running_alone``) and the ``crashguard.suspects`` lines
  (suspects/on their last chance). ``--rounds`` repeats it.
- ``message``: see bench/takeover_message.py. Worst and p99 publish-to-note
  delay (publish: when this process produced the record; note: when it
  first saw the note in the account, polled every 0.2 s), notes per 10 s
  around each kill, notes/s in the 30 s after each takeover as a ratio of
  the publish rate, and the notes per key (exactly one each).

    eval "$(scripts/services env)"
    nice .venv/bin/python -m bench.takeover [--scenario probe|message|both] [--rounds 2]

Loopback only; every wait is bounded. The workers' logs stay in the folder printed first.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402

from bench.scratch import scratch_database  # noqa: E402
from bench.takeover_message import message_run, print_message  # noqa: E402
from bench.worker_events import (  # noqa: E402
    assignment,
    done_times,
    guard_lines,
    kill,
    notices,
    print_notices,
    rate,
    steady,
    takeover,
)
from schemas.envelope import JobEnvelope  # noqa: E402
from tests.support.stack import JANITOR, Stack  # noqa: E402
from tests.support.worker import WorkerProcess  # noqa: E402

BASELINE_S = 15.0
SETTLE_S = 5.0
WINDOW_S = 5.0
AFTER_S = 30.0
TARGET = 0.8


class Backlog(threading.Thread):
    """Keeps about ``depth`` probe jobs published and not yet done (the workers' job.succeeded)."""

    def __init__(self, stack: Stack, workers: list[WorkerProcess], depth: int, job_ms: int):
        super().__init__(daemon=True)
        self.stack, self.workers, self.depth, self.job_ms = stack, workers, depth, job_ms
        self.stopped = threading.Event()
        self.produced = 0

    def _done(self, seen: dict[int, int]) -> int:
        done = 0
        for i, worker in enumerate(self.workers):
            events = worker.events
            start, end = seen.get(i, 0), len(events)
            seen[i] = end
            done += sum(1 for e in events[start:end] if e.get("event") == "job.succeeded")
        return done

    def run(self) -> None:
        producer = self.stack.producer()
        topic = self.stack.registry().topic_for("probe")
        seen: dict[int, int] = {}
        done = 0
        while not self.stopped.is_set():
            done += self._done(seen)
            for _ in range(min(self.depth - (self.produced - done), 5000)):
                job = JobEnvelope(type="probe", payload={"sleep_ms": self.job_ms, "record": True})
                producer.produce(topic, job.to_bytes(), str(random.random()).encode())
                self.produced += 1
            producer.poll(0)
            self.stopped.wait(0.1)
        producer.flush(10)


def recovery(times: list[float], start: float, baseline: float, limit_s: float) -> float | None:
    """Seconds from ``start`` to the end of the first 5 s window at >= 80 % (1 s steps)."""
    step = 0.0
    while step + WINDOW_S <= limit_s:
        if rate(times, start + step, start + step + WINDOW_S) >= TARGET * baseline:
            return step + WINDOW_S
        step += 1.0
    return None


def watch(b: WorkerProcess, killed: float, taken: float, limit: float) -> None:
    """Until 30 s after the takeover and B back to speed, or ``limit`` s after the takeover."""
    while True:
        time.sleep(1.0)
        now = time.time()
        if now > taken + limit:
            return
        if now < taken + AFTER_S + 1:
            continue
        times = done_times(b, killed - BASELINE_S - 1)
        baseline = rate(times, killed - BASELINE_S, killed)
        if recovery(times, taken, baseline, now - taken - 1) is not None:
            return


def probe_round(bootstrap: str, dsn: str, args: argparse.Namespace, n: int) -> dict[str, Any]:
    """One round: A and B steady, A SIGKILLed, B watched until back to speed (bounded)."""
    logs: Path = args.logs
    env = {
        "CONVEYOR_DLQ_MIRROR__ENABLED": "false",
        "CONVEYOR_JOBS__PROBE__ENABLED": "true",
        "CONVEYOR_JOBS__PROBE__CONCURRENCY": "8",
        "CONVEYOR_KAFKA__TOPIC_PARTITIONS": str(args.partitions),
    }
    stack = Stack(bootstrap, dsn, extra=env)
    stack.create_topics()
    topic = stack.registry().topic_for("probe")
    a = WorkerProcess(stack.env, logs / f"probe{n}-a.log").start()
    b = WorkerProcess(stack.env, logs / f"probe{n}-b.log").start()
    backlog = Backlog(stack, [a, b], args.depth, args.job_ms)
    backlog.start()
    try:
        since = steady([a, b], topic, args.partitions)
        time.sleep(max(0.0, since + SETTLE_S + BASELINE_S - time.time()))
        theirs = assignment(a, topic)[1]
        killed = kill(a)
        taken = takeover([b], theirs, killed)
        limit = max(AFTER_S, args.watch_s)
        watch(b, killed, taken, limit)
        return probe_figures(a, b, killed, taken, theirs, limit)
    finally:
        backlog.stopped.set()
        backlog.join(timeout=15)
        for worker in (a, b):
            worker.stop()
        JANITOR.delete(stack)


def probe_figures(
    a: WorkerProcess, b: WorkerProcess, killed: float, taken: float, theirs: set[str], limit: float
) -> dict[str, Any]:
    times, both = done_times(b), sorted(done_times(a) + done_times(b))
    baseline = rate(times, killed - BASELINE_S, killed)
    alone, suspects = guard_lines([b], killed)
    return {
        "baseline": baseline,
        "both": rate(both, killed - BASELINE_S, killed),
        "takeover_s": taken - killed,
        "partitions": len(theirs),
        "recovered_s": recovery(times, taken, baseline, limit),
        "ratio30": rate(times, taken, taken + AFTER_S) / baseline if baseline else 0.0,
        "windows": [
            rate(times, taken + k * WINDOW_S, taken + (k + 1) * WINDOW_S)
            for k in range(int(AFTER_S / WINDOW_S))
        ],
        "gap": rate(times, killed, taken),
        "alone": alone,
        "suspects": suspects,
        "notices": notices([a, b]),
    }


def print_probe(rounds: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\n== probe: takeover after a SIGKILL; probe x{args.job_ms} ms (record=true), "
        f"concurrency 8, backlog ~{args.depth}, {args.partitions} partitions, "
        f"{len(rounds)} round(s) =="
    )
    print(
        "  round  B before  A+B before  kill->takeover  B between  B 30 s after  x baseline"
        "  back to 80 %  run alone  suspects lines"
    )
    for n, r in enumerate(rounds, 1):
        back = f"{r['recovered_s']:.0f} s" if r["recovered_s"] is not None else "never"
        print(
            f"  {n:5d}  {r['baseline']:6.1f}/s  {r['both']:8.1f}/s  {r['takeover_s']:12.1f} s"
            f"  {r['gap']:7.1f}/s  {r['ratio30'] * r['baseline']:10.1f}/s  {r['ratio30']:10.2f}"
            f"  {back:>12s}  {r['alone']:9d}  {', '.join(r['suspects']) or '-'}"
        )
        windows = " ".join(f"{w:.0f}" for w in r["windows"])
        print(f"         B's 5 s windows after the takeover (jobs/s): {windows}")
    ratios = [r["ratio30"] for r in rounds]
    backs = [r["recovered_s"] for r in rounds]
    met = all(b is not None and b <= AFTER_S for b in backs)
    print(
        f"  median ratio {statistics.median(ratios):.2f}; target (a 5 s window at >= 80 % "
        f"within 30 s of the takeover, every round): {'met' if met else 'NOT met'}"
    )
    print_notices(sum((r["notices"] for r in rounds), Counter()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=("probe", "message", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=1, help="probe rounds")
    parser.add_argument("--job-ms", type=int, default=10, help="each probe job's sleep")
    parser.add_argument("--depth", type=int, default=3000, help="probe jobs kept ahead")
    parser.add_argument("--partitions", type=int, default=6, help="per topic")
    parser.add_argument("--watch-s", type=float, default=180, help="longest watch after takeover")
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--leads", type=int, default=30)
    parser.add_argument("--rate", type=float, default=2.0, help="message.send jobs per second")
    parser.add_argument(
        "--mid-post",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="kill while the victim has a POST in flight (bench/takeover_message.py)",
    )
    parser.add_argument("--in-flight", type=int, default=3, help="the victim's POSTs cut off")
    parser.add_argument("--answer-s", type=float, default=5.0, help="Kommo's answer delay then")
    parser.add_argument("--max-wait-s", type=float, default=900, help="longest wait for notes")
    parser.add_argument("--seed", type=int, default=18)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    return asyncio.run(run(args))


async def run(args: argparse.Namespace) -> int:
    bootstrap = os.environ.get("CONVEYOR_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    args.logs = Path(tempfile.mkdtemp(prefix="conveyor-takeover-"))
    print(f"workers' logs in {args.logs}", flush=True)
    try:
        async with scratch_database() as dsn:
            if args.scenario in ("probe", "both"):
                rounds = []
                for n in range(args.rounds):
                    rounds.append(await asyncio.to_thread(probe_round, bootstrap, dsn, args, n))
                    print(f"  probe round {n + 1}: x{rounds[-1]['ratio30']:.2f}", flush=True)
                print_probe(rounds, args)
            if args.scenario in ("message", "both"):
                print_message(await message_run(dsn, bootstrap, args), args)
    finally:
        JANITOR.wait()  # the runs' topics deleted, whatever happened
    return 0


if __name__ == "__main__":
    sys.exit(main())
