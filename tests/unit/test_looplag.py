from __future__ import annotations

import asyncio
import time

from structlog.testing import capture_logs

from streams.looplag import LoopLagMonitor, percentile


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99
    assert percentile([3.0], 99) == 3.0


async def test_a_blocked_loop_is_reported() -> None:
    monitor = LoopLagMonitor(tick_s=0.01, window_s=0.3, stall_ms=100)
    with capture_logs() as logs:
        monitor.start()
        await asyncio.sleep(0.05)
        time.sleep(0.2)  # noqa: ASYNC251 - block the loop on purpose
        await asyncio.sleep(0.4)
        await monitor.stop()
    stalls = [e for e in logs if e["event"] == "worker.loop_stalled"]
    windows = [e for e in logs if e["event"] == "worker.loop_lag"]
    assert stalls and stalls[0]["lag_ms"] >= 150
    assert windows and windows[0]["max_ms"] >= 150
