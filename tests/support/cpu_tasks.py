"""Functions the CPU-pool tests run in the pool's processes (importable by module path)."""

from __future__ import annotations

import contextlib
import os
import signal
import time

from handlers.assets.extract import time_limit


def pid(_: object) -> int:
    return os.getpid()


def busy(seconds: float) -> int:
    """Burn CPU for ``seconds``; returns the process id."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(range(1000))
    return os.getpid()


def spin_swallowing_errors(limit_s: float) -> None:
    """Loop forever like a parser that catches every ``Exception``, under ``time_limit``."""
    with time_limit(limit_s):
        while True:
            with contextlib.suppress(Exception):
                sum(range(1000))


def hang_deaf(_: object) -> None:
    """Hang where no signal handler runs (SIGALRM blocked): only a kill ends it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    with time_limit(0.1):
        time.sleep(3600)


def crash(_: object) -> None:
    os._exit(3)


def allocate(megabytes: int) -> int:
    """Hold ``megabytes`` of memory at once; returns its size."""
    block = bytearray(megabytes * 2**20)
    return len(block)


def abort(_: object) -> None:
    """Die as a C++ library does when an allocation fails (PDFium aborts)."""
    os.abort()
