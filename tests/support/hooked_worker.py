"""``conveyor`` with test-only delays injected: a test hook, never part of the service.

Some defects need a narrow interleaving (a commit in flight while partitions
are revoked, a queue put held across a rebalance). Tests widen that window
by starting the worker through this module instead of ``streams.commands.cli``::

    python -m tests.support.hooked_worker --commit-delay-s 2 -- run

Each option wraps one method of the worker process with an ``asyncio.sleep``
before the original runs; nothing else changes. No setting or environment
variable of the service can turn these on: only a test that starts this
module does.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from mode.utils.queues import FlowControlQueue

from streams.commands import cli
from streams.consumer import TrackedConsumer

AsyncFn = Callable[..., Coroutine[Any, Any, Any]]


def _delayed(fn: AsyncFn, delay_s: float) -> AsyncFn:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(delay_s)
        return await fn(*args, **kwargs)

    return wrapper


def install(commit_delay_s: float = 0.0, queue_put_delay_s: float = 0.0) -> None:
    """Patch the classes of this process (the worker subprocess only)."""
    if commit_delay_s:
        # Every commit (periodic, revoke, drain) takes its offsets, then waits
        # here before it reaches the broker: a commit stays "in flight" longer.
        TrackedConsumer._commit_offsets = _delayed(  # type: ignore[method-assign]
            TrackedConsumer._commit_offsets, commit_delay_s
        )
    if queue_put_delay_s:
        # Faust's full-queue path delivers an event with a put task; the delay
        # holds that task before its first step, across a revoke if one comes.
        FlowControlQueue.put = _delayed(  # type: ignore[method-assign]
            FlowControlQueue.put, queue_put_delay_s
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit-delay-s", type=float, default=0.0)
    parser.add_argument("--queue-put-delay-s", type=float, default=0.0)
    parser.add_argument("conveyor_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    install(args.commit_delay_s, args.queue_put_delay_s)
    rest = [a for a in args.conveyor_args if a != "--"] or ["run"]
    return cli.main(rest)


if __name__ == "__main__":
    sys.exit(main())
