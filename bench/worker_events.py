"""What the benchmarks read from worker subprocesses' JSON log events (tests/support/worker.py).

Times are the events' own timestamps (UTC, ISO), so a figure does not
depend on when this process got round to reading a line.
"""

from __future__ import annotations

import bisect
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from tests.support.worker import WorkerProcess

WAIT_S = 180.0
NOTICE = {"warning", "error", "critical", "exception"}


def when(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def named(worker: WorkerProcess, name: str, after: float = 0.0) -> list[dict[str, Any]]:
    return [e for e in list(worker.events) if e.get("event") == name and when(e) > after]


def done_times(worker: WorkerProcess, after: float = 0.0) -> list[float]:
    """When each of the worker's jobs ended (``job.succeeded``), sorted."""
    return sorted(when(e) for e in named(worker, "job.succeeded", after))


def rate(times: list[float], start: float, end: float) -> float:
    """Events per second in [start, end) of a sorted list."""
    count = bisect.bisect_left(times, end) - bisect.bisect_left(times, start)
    return count / (end - start)


def assignment(worker: WorkerProcess, topic: str) -> tuple[int, set[str]]:
    """(generation, partitions of ``topic``) of the latest assignment; (-1, set()) if none."""
    for event in reversed(list(worker.events)):
        if event.get("event") == "worker.partitions_assigned":
            parts = {tp for tp in event["assigned"] if tp.rsplit(":", 1)[0] == topic}
            return int(event.get("generation", 0)), parts
    return -1, set()


def until(check: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.5) -> Any:
    """Poll ``check`` until it returns something true; that value (TimeoutError at the end)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(poll_s)
    raise TimeoutError(f"not within {timeout_s:g} s: {what}")


def steady(workers: list[WorkerProcess], topic: str, partitions: int, ran: bool = True) -> float:
    """When the workers shared ``topic``'s partitions in one generation (and each ran a job)."""

    def check() -> float | None:
        latest = [assignment(w, topic) for w in workers]
        if any(not parts for _, parts in latest) or len({gen for gen, _ in latest}) != 1:
            return None
        if sum(len(parts) for _, parts in latest) != partitions:
            return None
        since = max(when(named(w, "worker.partitions_assigned")[-1]) for w in workers)
        done = all(named(w, "job.succeeded", since) for w in workers)
        return since if done or not ran else None

    return float(until(check, WAIT_S, "the workers consuming in one generation"))


def takeover(live: list[WorkerProcess], theirs: set[str], killed: float) -> float:
    """When the last of a dead worker's partitions (``theirs``) was assigned to a live one."""

    def check() -> float | None:
        first: dict[str, float] = {}
        for worker in live:
            for event in named(worker, "worker.partitions_assigned", killed):
                for tp in theirs & set(event["assigned"]):
                    first[tp] = min(first.get(tp, float("inf")), when(event))
        return max(first.values()) if set(first) == theirs else None

    return float(until(check, WAIT_S, "the dead worker's partitions taken over"))


def kill(worker: WorkerProcess) -> float:
    """SIGKILL the worker; when."""
    worker.signal(signal.SIGKILL)
    killed = time.time()
    worker.wait_exit(timeout_s=10)
    return killed


def notices(workers: Iterable[WorkerProcess]) -> Counter[str]:
    """Warning and error lines of the workers by level and event (lines not JSON: 'raw')."""
    counts: Counter[str] = Counter()
    for worker in workers:
        for event in list(worker.events):
            if event.get("event") == "raw" or event.get("level") in NOTICE:
                counts[f"{event.get('level', 'raw')}:{event.get('event')}"] += 1
    return counts


def guard_lines(workers: Iterable[WorkerProcess], after: float) -> tuple[int, list[str]]:
    """Records run alone, and each ``crashguard.suspects`` line (suspects/on their last chance)."""
    alone = sum(len(named(w, "job.running_alone", after)) for w in workers)
    suspects = [
        f"{e.get('suspects')}/{e.get('last_chance', '?')}"
        for w in workers
        for e in named(w, "crashguard.suspects", after)
    ]
    return alone, suspects


def print_notices(counts: Counter[str]) -> None:
    shown = ", ".join(f"{name} x{n}" for name, n in counts.most_common(12)) or "none"
    print(f"  workers' warning/error lines: {shown}")
