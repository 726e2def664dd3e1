"""What runtime control and status reports add per job, measured in-process (no broker noise).

Two costs, against the worker's time per job in ``bench.throughput``:

- **The pool's hot path**: 100,000 no-op records through a job pool at
  concurrency 8 with nothing paused, this checkout's pool (which checks for
  a pause gate before each record and notes what each slot runs and since
  when) against the pool of a
  baseline checkout (``--baseline DIR``, e.g. ``git archive`` of the commit
  before), in alternating rounds; the median difference per record.
- **A status report**: building one for a worker with six pools and 48
  running jobs (what the reporter does every ``fleet.report_interval_s``),
  per report and per second of the default 5 s interval.

    .venv/bin/python -m bench.fleet_cost --baseline /tmp/conveyor-base [--rounds 11]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from schemas.envelope import JobEnvelope  # noqa: E402
from streams.offsets import OffsetTracker  # noqa: E402
from streams.pool import JobPool  # noqa: E402
from streams.records import Record  # noqa: E402
from streams.settings import Settings  # noqa: E402
from streams.status import Sources, StatusReporter  # noqa: E402

RECORDS = 100_000
TP = ("jobs.probe", 0)
VALUE = JobEnvelope(id="j", type="probe", organization_id="acme", payload={}).to_bytes()


def load_pool(source: Path) -> ModuleType:
    """The baseline's streams/pool.py as a module of its own (its imports are today's)."""
    spec = importlib.util.spec_from_file_location("baseline_pool", source / "streams" / "pool.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def through(pool_class: Any) -> float:
    """Seconds to run ``RECORDS`` no-op records through a pool of ``pool_class``."""
    tracker: OffsetTracker[Any] = OffsetTracker()
    tracker.assign([TP])
    tracker.set_positions({TP: 0})
    done = asyncio.Event()
    count = 0

    async def run(_: Record) -> None:
        nonlocal count
        count += 1
        if count == RECORDS:
            done.set()

    # Nothing paused: this checkout's pool has no gate to ask (streams/control.py).
    pool = pool_class("probe", 8, run, tracker, high_water=10**9, high_water_bytes=10**12)
    records = [Record(TP[0], TP[1], i, None, VALUE, (), None) for i in range(RECORDS)]
    started = time.process_time()  # this process's CPU: other processes' load left out
    for record in records:
        pool.submit(TP, record)
    await done.wait()
    elapsed = time.process_time() - started
    pool.accepting = False
    await pool.drain(0.1)
    return elapsed


async def pool_cost(baseline: ModuleType, rounds: int) -> None:
    base: list[float] = []
    mine: list[float] = []
    for i in range(rounds):
        order = [(baseline.JobPool, base), (JobPool, mine)]
        for cls, out in order if i % 2 == 0 else reversed(order):
            out.append(await through(cls) / RECORDS * 1e6)
    diffs = [m - b for m, b in zip(mine, base, strict=True)]
    print(f"pool hot path, {RECORDS} records, {rounds} alternating rounds (CPU us per record):")
    b, m, d = (statistics.median(x) for x in (base, mine, diffs))
    print(f"  baseline median {b:.3f}, this checkout {m:.3f}")
    print(f"  added: median {d:+.3f} us per record {[round(x, 3) for x in diffs]}")


class FakePool:
    def __init__(self, name: str, loop_now: float) -> None:
        self.name, self.concurrency, self.finished = name, 8, 1000
        self.in_flight, self.waiting, self.held = 8, 20, 0
        payload = {"x": "y" * 500}
        value = JobEnvelope(id=f"{name}-j", type=name, organization_id="acme", payload=payload)
        self._running = [
            (Record(f"jobs.{name}", 0, i, b"lead-1", value.to_bytes(), (), None), loop_now - i)
            for i in range(8)
        ]

    def running(self) -> list[tuple[Record, float]]:
        return self._running


async def report_cost() -> None:
    now = asyncio.get_running_loop().time()
    pools = [FakePool(f"type{i}", now) for i in range(6)]
    sources = Sources(
        pools=lambda: pools,
        partitions=lambda: [],
        paused=list,
        state=lambda: "running",
        loop_lag_ms=lambda: 1.0,
    )
    reporter = StatusReporter(Settings(), sources)
    n = 2000
    started = time.process_time()
    for _ in range(n):
        reporter.report().to_bytes()
    per = (time.process_time() - started) / n
    interval = Settings().fleet.report_interval_s
    print(f"status report (6 pools, 48 running jobs): {per * 1e6:.0f} us to build and encode;")
    print(f"  every {interval:g} s: {per / interval * 100:.4f} % of one core")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    baseline = load_pool(args.baseline.resolve())
    asyncio.run(pool_cost(baseline, args.rounds))
    asyncio.run(report_cost())
    return 0


if __name__ == "__main__":
    sys.exit(main())
