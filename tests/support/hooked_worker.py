"""``conveyor`` with test-only delays injected: a test hook, never part of the service.

Some defects need a narrow interleaving (a commit in flight while partitions
are revoked, a queue put held across a rebalance). Tests widen that window
by starting the worker through this module instead of ``streams.commands.cli``::

    python -m tests.support.hooked_worker --commit-delay-s 2 -- run

Each delay option wraps one method of the worker process with an
``asyncio.sleep`` before the original runs; nothing else changes.
``--hide-topic-at-first-assignment TOPIC`` makes the first assignment this
worker performs as the group's leader see cluster metadata without TOPIC, and
the metadata keep hiding it until the next metadata answer: what a broker
that has just restarted can answer (docs/RELIABILITY.md, "Assignments from
incomplete metadata"). ``--extraction-probe FILE`` runs ``tests.support.extraction_probe.attack`` in
one of the worker's extraction processes once they started (as a parser
exploit would run there) and writes its report to FILE as JSON. No setting or environment
variable of the service can turn these on: only a test that starts this
module does.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from aiokafka.cluster import ClusterMetadata
from aiokafka.consumer.group_coordinator import GroupCoordinator
from mode.utils.queues import FlowControlQueue

from handlers.cpu_pool import ProcessCpuPool
from streams.commands import cli
from streams.consumer import TrackedConsumer
from tests.support import extraction_probe

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


def hide_topic_at_first_assignment(topic: str) -> None:
    """The leader's first assignment, and the metadata until its next update, lack ``topic``."""
    state = {"hiding": False, "done": False}
    partitions_for_topic = ClusterMetadata.partitions_for_topic
    update_metadata = ClusterMetadata.update_metadata
    perform_assignment = GroupCoordinator._perform_assignment

    def hidden(self: ClusterMetadata, name: str) -> set[int] | None:
        return None if state["hiding"] and name == topic else partitions_for_topic(self, name)

    def updated(self: ClusterMetadata, metadata: Any) -> None:
        state["hiding"] = False  # the next answer is complete again
        update_metadata(self, metadata)

    async def assigning(self: GroupCoordinator, response: Any) -> Any:
        if state["done"]:
            return await perform_assignment(self, response)
        state["done"] = True
        client = self._client
        wait = client._maybe_wait_metadata

        async def waited() -> None:  # the metadata the assignor reads next is incomplete
            await wait()
            state["hiding"] = True

        client._maybe_wait_metadata = waited
        try:
            return await perform_assignment(self, response)
        finally:
            del client._maybe_wait_metadata

    ClusterMetadata.partitions_for_topic = hidden  # type: ignore[method-assign]
    ClusterMetadata.update_metadata = updated  # type: ignore[method-assign]
    GroupCoordinator._perform_assignment = assigning  # type: ignore[method-assign]


def probe_extraction(report: Path) -> None:
    """After the extraction processes started, run the attack in one of them.

    Its needles: every secret the operator put in the environment, whatever
    the case of the variable's name (read now, before the worker clears them).
    """
    needles = [
        value
        for name, value in os.environ.items()
        if name.upper().startswith("CONVEYOR_")
        and ("KEY" in name.upper() or "SECRET" in name.upper())
    ]
    original = ProcessCpuPool.start

    async def start(self: ProcessCpuPool) -> None:
        await original(self)
        found = await self.run(extraction_probe.attack, needles, timeout_s=120)
        text = json.dumps({**found, "needles": len(needles)})
        await asyncio.to_thread(report.write_text, text)

    ProcessCpuPool.start = start  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit-delay-s", type=float, default=0.0)
    parser.add_argument("--queue-put-delay-s", type=float, default=0.0)
    parser.add_argument("--extraction-probe", type=Path, default=None)
    parser.add_argument("--hide-topic-at-first-assignment", default=None)
    parser.add_argument("conveyor_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    install(args.commit_delay_s, args.queue_put_delay_s)
    if args.hide_topic_at_first_assignment:
        hide_topic_at_first_assignment(args.hide_topic_at_first_assignment)
    if args.extraction_probe is not None:
        probe_extraction(args.extraction_probe)
    rest = [a for a in args.conveyor_args if a != "--"] or ["run"]
    return cli.main(rest)


if __name__ == "__main__":
    sys.exit(main())
