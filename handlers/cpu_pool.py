"""A process pool for CPU-heavy work (text extraction), off the event loop.

Each slot is a one-process ``ProcessPoolExecutor``, so a stuck or crashed
task costs only its own process: the slot kills it and starts a fresh one,
and the other slots keep working. Work normally ends itself (extraction has
its own time limit inside the process); the kill is the backstop for work
stuck where no Python signal handler can run. Processes are spawned (a
fresh interpreter), never forked from the worker's threaded,
event-loop-running process; each asks the kernel to kill it when the worker
dies, so a SIGKILLed worker leaves no orphans behind (a forkserver would
outlive it). They are replaced after ``recycle_after`` tasks so memory a
parser kept does not accumulate. With ``memory_limit_bytes`` each process
gets that ceiling on its address space (``RLIMIT_AS``): a document that needs
more fails alone (``CpuMemoryExceeded``) instead of the kernel choosing
which process of the pod to kill.

The processes parse hostile files, so a parser exploit must not reach the
worker's secrets (docs/SECURITY.md, "Secrets"). Before the first one starts,
the worker makes itself non-dumpable (``PR_SET_DUMPABLE`` 0): a process of the
same user without ``CAP_SYS_PTRACE`` can then neither read
``/proc/<worker>/environ`` (which still holds the environment the worker
started with, whatever ``unsetenv`` did) nor its memory (``/proc/<worker>/mem``,
``ptrace``, ``process_vm_readv``). Each extraction process then drops every
capability (also when the worker runs as root), sets ``no_new_privs`` and
makes itself non-dumpable too, so it cannot read its siblings' documents.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import importlib
import logging
import multiprocessing
import os
import resource
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any, TypeVar, cast

import structlog

from handlers import tracing

log = structlog.get_logger(__name__)

A = TypeVar("A")
R = TypeVar("R")


class CpuTimeout(Exception):
    """The work ran past its time limit and grace; its process was killed."""


class CpuWorkerLost(Exception):
    """The process running the work died (crash, out of memory) or was stopped."""


class CpuMemoryExceeded(Exception):
    """The work needed more memory than the pool's per-process ceiling."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(f"needs more than {limit_bytes / 2**20:.0f} MB")
        self.limit_bytes = limit_bytes


def _pid(_: object) -> int:
    return os.getpid()


PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
LAST_CAPABILITY = 63  # the kernel answers EINVAL past its own last one


def _libc() -> ctypes.CDLL | None:
    return ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def undumpable() -> None:
    """Linux: make this process non-dumpable, so no other process of its user without
    ``CAP_SYS_PTRACE`` reads its environment or memory (no-op elsewhere)."""
    libc = _libc()
    if libc is not None and libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def _drop_privileges(libc: ctypes.CDLL) -> None:
    """No capability left (bounding, ambient, effective, permitted, inheritable), none to
    regain through exec, and non-dumpable."""
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    for cap in range(LAST_CAPABILITY + 1):  # needs CAP_SETPCAP: before the capset below
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break  # EINVAL past the last capability; EPERM when there is none to drop
    header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # two sets of (effective, permitted, inheritable): empty
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset() could not drop the capabilities")
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def _init_child(parent_pid: int, preload: tuple[str, ...], memory_limit: int | None) -> None:
    _die_with_parent(parent_pid)
    for module in preload:  # import now, not in the first job's time
        importlib.import_module(module)
    if memory_limit is not None:  # past it, allocations fail (MemoryError) in this process only
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    libc = _libc()
    if libc is not None:  # last: nothing trusted needs a privilege after this
        _drop_privileges(libc)
    # Only the worker decides when to stop; a terminal's Ctrl-C must not break the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in ("pypdf", "mammoth"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGKILL this process when the worker dies (no-op elsewhere)."""
    libc = _libc()
    if libc is None:
        return
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the worker died before the request took effect
        os._exit(1)


def _notify(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    """Hand a finished future back to the loop's thread (unless the loop is gone)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


class _Slot:
    def __init__(
        self, index: int, context: Any, preload: tuple[str, ...], memory_limit: int | None
    ) -> None:
        self.index = index
        self._preload = preload
        self._context = context
        self._memory_limit = memory_limit
        self.tasks = 0
        self.executor = self._new()

    def _new(self) -> concurrent.futures.ProcessPoolExecutor:
        self.tasks = 0
        return concurrent.futures.ProcessPoolExecutor(
            max_workers=1,
            mp_context=self._context,
            initializer=_init_child,
            initargs=(os.getpid(), self._preload, self._memory_limit),
        )

    def processes(self) -> list[Any]:
        return list((getattr(self.executor, "_processes", None) or {}).values())

    def kill(self) -> None:
        for process in self.processes():
            if process.is_alive():
                process.kill()

    def renew(self) -> None:
        old, self.executor = self.executor, self._new()
        old.shutdown(wait=False, cancel_futures=True)


class ProcessCpuPool:
    """``CpuPool`` (handlers.deps) over ``workers`` single-process slots."""

    def __init__(
        self,
        workers: int,
        *,
        grace_s: float = 10.0,
        recycle_after: int = 50,
        preload: Sequence[str] = (),
        memory_limit_bytes: int | None = None,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        undumpable()  # before any process that parses hostile files exists
        self.workers = workers
        self.grace_s = grace_s
        self.recycle_after = recycle_after
        self.memory_limit_bytes = memory_limit_bytes
        self._slots = [
            _Slot(i, context, tuple(preload), memory_limit_bytes) for i in range(workers)
        ]
        self._free: asyncio.Queue[_Slot] = asyncio.Queue()
        for slot in self._slots:
            self._free.put_nowait(slot)
        self._closed = False

    async def start(self) -> None:
        """Start every process now, so the first job does not pay for it."""
        await asyncio.gather(*(self.run(_pid, None, timeout_s=60) for _ in self._slots))

    async def run(self, fn: Callable[[A], R], arg: A, *, timeout_s: float) -> R:
        if self._closed:
            raise CpuWorkerLost("the process pool is shut down")
        slot = await self._free.get()
        loop = asyncio.get_running_loop()
        parent = tracing.parent()  # the job's span, carried into the process (if recorded)
        future: concurrent.futures.Future[Any]
        try:
            if parent is None:
                future = slot.executor.submit(fn, arg)
            else:
                future = slot.executor.submit(tracing.in_child, (fn, arg, parent))
        except BaseException:
            self._release(slot, None)
            raise
        slot.tasks += 1
        processes = slot.processes()
        killer = loop.call_later(timeout_s + self.grace_s, self._kill, slot, future)
        future.add_done_callback(partial(_notify, loop, self._finished, slot, killer))
        try:
            result = await asyncio.shield(asyncio.wrap_future(future))
            return cast(R, result if parent is None else tracing.adopt(result))
        except MemoryError:
            if self.memory_limit_bytes is None:
                raise
            raise CpuMemoryExceeded(self.memory_limit_bytes) from None
        except BrokenProcessPool:
            if getattr(future, "conveyor_killed", False):
                raise CpuTimeout(f"still running {timeout_s + self.grace_s:g} s later") from None
            if await self._aborted_at_the_ceiling(processes):
                raise CpuMemoryExceeded(self.memory_limit_bytes or 0) from None
            raise CpuWorkerLost("the process died while working (out of memory?)") from None

    async def _aborted_at_the_ceiling(self, processes: list[Any]) -> bool:
        """C++ parsers (PDFium) abort when an allocation fails: with a ceiling, that is why."""
        if self.memory_limit_bytes is None:
            return False
        for process in processes:  # dead or dying (a core dump takes a moment)
            await asyncio.to_thread(process.join, 5.0)
        return any(p.exitcode == -signal.SIGABRT for p in processes)

    def _kill(self, slot: _Slot, future: concurrent.futures.Future[Any]) -> None:
        if future.done():
            return
        future.conveyor_killed = True  # type: ignore[attr-defined]
        log.warning("cpu_pool.killed", slot=slot.index, reason="past its time limit")
        slot.kill()

    def _finished(
        self,
        slot: _Slot,
        killer: asyncio.TimerHandle,
        future: concurrent.futures.Future[Any],
    ) -> None:
        killer.cancel()
        broken = not future.cancelled() and isinstance(future.exception(), BrokenProcessPool)
        self._release(slot, broken)

    def _release(self, slot: _Slot, broken: bool | None) -> None:
        if self._closed:
            return
        if broken or slot.tasks >= self.recycle_after:
            slot.renew()
        self._free.put_nowait(slot)

    def shutdown(self) -> None:
        """Stop every process now; running work is abandoned (the drain came first)."""
        self._closed = True
        for slot in self._slots:
            slot.kill()
            slot.executor.shutdown(wait=False, cancel_futures=True)
