"""The extraction process pool: off the loop, time limits that free the process, crashes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from handlers.assets import process
from handlers.assets.extract import ExtractRequest, extract_to_file
from handlers.cpu_pool import CpuMemoryExceeded, CpuTimeout, CpuWorkerLost, ProcessCpuPool
from handlers.errors import PermanentError
from tests.support import cpu_tasks
from tests.support.documents import DOCX_MIME, formatted_docx, pdf_bytes
from tests.support.policies import CHUNKING, EXTRACT


@pytest.fixture
async def pool() -> AsyncIterator[ProcessCpuPool]:
    cpu = ProcessCpuPool(2, grace_s=0.5)
    await cpu.start()
    try:
        yield cpu
    finally:
        cpu.shutdown()


async def test_work_runs_in_other_processes_and_the_loop_keeps_ticking(
    pool: ProcessCpuPool,
) -> None:
    lags: list[float] = []

    async def probe() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - before - 0.01)

    ticker = asyncio.create_task(probe())
    pids = await asyncio.gather(*(pool.run(cpu_tasks.busy, 0.4, timeout_s=10) for _ in range(2)))
    ticker.cancel()
    assert os.getpid() not in pids and len(set(pids)) == 2
    assert max(lags) < 0.1, f"event loop stalled {max(lags):.3f} s"


async def test_the_time_limit_inside_the_process_ends_work_that_swallows_exceptions(
    pool: ProcessCpuPool,
) -> None:
    started = time.monotonic()
    with pytest.raises(PermanentError, match=r"longer than the 0\.3 s limit"):
        await pool.run(cpu_tasks.spin_swallowing_errors, 0.3, timeout_s=10)
    assert time.monotonic() - started < 5
    assert await pool.run(cpu_tasks.pid, None, timeout_s=10) > 0


async def test_work_deaf_to_the_timer_is_killed_and_its_slot_replaced(
    pool: ProcessCpuPool,
) -> None:
    before = set(await asyncio.gather(*(pool.run(cpu_tasks.pid, None, timeout_s=5) for _ in "ab")))
    started = time.monotonic()
    with pytest.raises(CpuTimeout):
        await pool.run(cpu_tasks.hang_deaf, None, timeout_s=0.5)
    assert time.monotonic() - started < 5
    after = set(await asyncio.gather(*(pool.run(cpu_tasks.pid, None, timeout_s=5) for _ in "ab")))
    assert len(after) == 2 and after != before, "the killed process was replaced"


async def test_the_kill_happens_even_when_nobody_waits_any_more(pool: ProcessCpuPool) -> None:
    task = asyncio.create_task(pool.run(cpu_tasks.hang_deaf, None, timeout_s=0.3))
    await asyncio.sleep(0.1)
    task.cancel()  # the job timed out: its coroutine is gone, the process is still hung
    results = await asyncio.wait_for(
        asyncio.gather(*(pool.run(cpu_tasks.pid, None, timeout_s=5) for _ in "abc")), timeout=10
    )
    assert len(results) == 3


async def test_a_crashed_process_is_reported_and_replaced(pool: ProcessCpuPool) -> None:
    with pytest.raises(CpuWorkerLost):
        await pool.run(cpu_tasks.crash, None, timeout_s=5)
    assert await pool.run(cpu_tasks.pid, None, timeout_s=5) > 0


async def test_a_document_over_the_extraction_time_limit_is_refused(
    pool: ProcessCpuPool, tmp_path: Path
) -> None:
    source = tmp_path / "long.pdf"
    source.write_bytes(pdf_bytes(40))
    request = ExtractRequest(
        str(source),
        "application/pdf",
        str(tmp_path / "out.jsonl"),
        replace(EXTRACT, time_limit_s=0.001),
        CHUNKING.size,
        CHUNKING.overlap,
    )
    with pytest.raises(PermanentError, match=r"took longer than the 0\.001 s limit"):
        await pool.run(extract_to_file, request, timeout_s=10)
    assert await pool.run(cpu_tasks.pid, None, timeout_s=5) > 0


async def test_work_past_the_memory_ceiling_fails_alone_and_the_pool_goes_on() -> None:
    pool = ProcessCpuPool(1, memory_limit_bytes=256 * 2**20)
    try:
        await pool.start()
        with pytest.raises(CpuMemoryExceeded, match="needs more than 256 MB"):
            await pool.run(cpu_tasks.allocate, 300, timeout_s=10)
        with pytest.raises(CpuMemoryExceeded):  # a C++ parser aborts instead of raising
            await pool.run(cpu_tasks.abort, None, timeout_s=10)
        assert await pool.run(cpu_tasks.allocate, 50, timeout_s=10) == 50 * 2**20
    finally:
        pool.shutdown()


async def test_a_document_needing_more_than_the_ceiling_is_refused_with_that_reason(
    tmp_path: Path,
) -> None:
    """mammoth on 2 MiB of formatted XML peaks near 190 MB: over a 160 MB ceiling."""
    source = tmp_path / "formatted.docx"
    source.write_bytes(formatted_docx(1.9))
    request = ExtractRequest(
        str(source),
        DOCX_MIME,
        str(tmp_path / "out.jsonl"),
        EXTRACT,
        CHUNKING.size,
        CHUNKING.overlap,
    )
    pool = ProcessCpuPool(1, memory_limit_bytes=160 * 2**20, preload=["handlers.assets.extract"])
    try:
        await pool.start()
        with pytest.raises(CpuMemoryExceeded, match="needs more than 160 MB"):
            await pool.run(extract_to_file, request, timeout_s=60)
    finally:
        pool.shutdown()
    roomy = ProcessCpuPool(1, memory_limit_bytes=512 * 2**20, preload=["handlers.assets.extract"])
    try:
        await roomy.start()
        summary = await roomy.run(extract_to_file, request, timeout_s=60)
        assert summary.chunks > 50
    finally:
        roomy.shutdown()


OWNER = """
import asyncio, os, signal, sys
from handlers.cpu_pool import ProcessCpuPool
from tests.support import cpu_tasks

async def main():
    pool = ProcessCpuPool(2)
    await pool.start()
    pids = await asyncio.gather(*(pool.run(cpu_tasks.pid, None, timeout_s=10) for _ in "ab"))
    print(*pids, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

if __name__ == "__main__":
    asyncio.run(main())
"""


def test_pool_processes_die_with_a_killed_worker(tmp_path: Path) -> None:
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    children = [int(pid) for pid in done.stdout.split()]
    assert len(children) == 2
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() for pid in children):
        assert time.monotonic() < deadline, "extraction processes outlived the worker"
        time.sleep(0.05)


class _CeilingPool:
    async def run(self, fn: object, arg: object, *, timeout_s: float) -> object:
        raise CpuMemoryExceeded(512 * 2**20)


async def test_asset_process_turns_the_ceiling_into_a_permanent_reason(tmp_path: Path) -> None:
    deps = SimpleNamespace(cpu=_CeilingPool(), extract=EXTRACT, chunking=CHUNKING)
    with pytest.raises(PermanentError) as caught:
        await process._extract(deps, tmp_path / "a.pdf", "application/pdf", tmp_path / "o")  # type: ignore[arg-type]
    assert str(caught.value) == (
        "the document needs more than 512 MB to extract (the limit of each extraction process)"
    )
