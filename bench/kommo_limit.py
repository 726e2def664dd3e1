"""Kommo's per-account limit shared by several workers, each with its own AdaptiveLimiter.

A local Kommo account (tests/support/kommo_server.py) accepts at most 7
requests in any second and answers 429 + ``Retry-After`` beyond that. Each
simulated worker has its own session, limiter and Postgres pool (as separate
pods would) and runs ``--concurrency`` loops of the real ``crm.sync_pipelines``
handler (four requests a sync), each loop on its own connection of that one
account, for ``--duration-s`` (tests/support/kommo_load.py). Baseline in the
same run: one worker alone.

Reported: accepted requests per second (the share of the account's 7/s
used), 429 answers, and how the jobs ended (a 429 wait budget exhausted
would surface as a RetryableError). ``--runs`` repeats the shared run to
show its spread.

    eval "$(scripts/services env)"
    .venv/bin/python -m bench.kommo_limit [--workers 3] [--duration-s 40] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging

import structlog

from bench.scratch import scratch_database
from tests.support.kommo_load import Load, run_workers, small_account
from tests.support.kommo_server import kommo_server


async def measure(dsn: str, workers: int, concurrency: int, duration_s: float) -> Load:
    async with kommo_server(rate_limit=7) as server:
        small_account(server)
        return await run_workers(dsn, server, workers, concurrency, duration_s)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--duration-s", type=float, default=40.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--runs", type=int, default=1, help="shared runs (the spread)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    async with scratch_database() as dsn:
        baseline = await measure(dsn, 1, args.concurrency, args.duration_s)
        print(baseline.line(), flush=True)
        shared = []
        for _ in range(args.runs):
            shared.append(await measure(dsn, args.workers, args.concurrency, args.duration_s))
            print(shared[-1].line(), flush=True)
    low = min(r.utilisation for r in shared)
    print(
        f"ratio {args.workers} workers / 1 worker: "
        f"{', '.join(f'{r.utilisation / baseline.utilisation:.2f}' for r in shared)}; "
        f"lowest share of the limit {low:.1%}; jobs failed {sum(r.failed for r in shared)}"
    )


if __name__ == "__main__":
    asyncio.run(main())
