"""Await a condition in Postgres with a deadline (the worker is another process)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    timeout_s: float = 60.0,
    what: str = "condition",
) -> T:
    """Re-read ``probe()`` until ``accept`` holds; fail with the last value seen."""
    deadline = time.monotonic() + timeout_s
    value = await probe()
    while not accept(value):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_s} s waiting for {what}; last: {value!r}"
            )
        await asyncio.sleep(0.2)
        value = await probe()
    return value
