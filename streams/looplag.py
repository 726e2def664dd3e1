"""Event-loop lag: how late a short timer fires, sampled all the time.

A stalled loop delays Kafka heartbeats and every other job, so the worker
measures it rather than assuming it: ``worker.loop_lag`` summarises each
window (p50/p99/max in ms) and ``worker.loop_stalled`` reports any single
stall over ``stall_ms`` as it happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import math

import structlog

from streams import metrics

log = structlog.get_logger(__name__)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(math.ceil(q / 100 * len(ordered)) - 1, 0)
    return ordered[rank]


class LoopLagMonitor:
    def __init__(
        self, tick_s: float = 0.05, window_s: float = 10.0, stall_ms: float = 100.0
    ) -> None:
        self.tick_s = tick_s
        self.window_s = window_s
        self.stall_ms = stall_ms
        self._task: asyncio.Task[None] | None = None
        self.last_p99_ms: float | None = None  # of the last full window (status reports)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        samples: list[float] = []
        window_start = loop.time()
        while True:
            before = loop.time()
            await asyncio.sleep(self.tick_s)
            lag_ms = max(loop.time() - before - self.tick_s, 0.0) * 1000
            samples.append(lag_ms)
            if lag_ms > self.stall_ms:
                log.warning("worker.loop_stalled", lag_ms=round(lag_ms, 1))
            if loop.time() - window_start >= self.window_s:
                for quantile, value in (
                    ("0.5", percentile(samples, 50)),
                    ("0.99", percentile(samples, 99)),
                    ("1", max(samples)),
                ):
                    metrics.LOOP_LAG.labels(quantile).set(value / 1000)
                log.info(
                    "worker.loop_lag",
                    samples=len(samples),
                    p50_ms=round(percentile(samples, 50), 2),
                    p99_ms=round(percentile(samples, 99), 2),
                    max_ms=round(max(samples), 2),
                )
                self.last_p99_ms = round(percentile(samples, 99), 2)
                samples, window_start = [], loop.time()
