"""Kommo's per-account limit shared by several workers, each with its own AdaptiveLimiter.

A local Kommo account (tests/support/kommo_server.py) accepts at most 7
requests in any second and answers 429 + ``Retry-After`` beyond that. Each
simulated worker has its own session and limiter (as separate pods would)
and runs ``--concurrency`` loops of ``GET /api/v4/leads/pipelines`` for
``--duration-s``. Baseline in the same run: one worker alone.

Reported: accepted requests per second (the share of the account's 7/s
used), 429 answers, and calls that failed (a 429 wait budget exhausted
would surface here as a RetryableError).

    .venv/bin/python -m bench.kommo_limit [--workers 3] [--duration-s 30] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass

import aiohttp
import structlog

from handlers.errors import JobError
from handlers.providers.kommo import Kommo
from tests.support.crm import MemoryTokens, config
from tests.support.kommo_server import KommoServer, kommo_server, make_pipelines

LIMIT = 7


@dataclass(frozen=True)
class Result:
    workers: int
    elapsed_s: float
    accepted: int
    throttled: int
    failed: Counter[str]
    final_rates: list[float]

    @property
    def rate(self) -> float:
        return self.accepted / self.elapsed_s


async def _worker(
    server: KommoServer, concurrency: int, until: float, failed: Counter[str], **tuning: float
) -> float:
    async with aiohttp.ClientSession() as session:
        kommo = Kommo(session, config(timeout_s=10.0, **tuning))
        client = kommo.client(server.base_url, MemoryTokens(kommo, server))

        async def loop() -> None:
            while time.monotonic() < until:
                try:
                    await client.pipelines()
                except JobError as exc:
                    failed[type(exc).__name__] += 1

        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return client.limiter.rate


async def run(workers: int, concurrency: int, duration_s: float, **tuning: float) -> Result:
    async with kommo_server(rate_limit=LIMIT) as server:
        server.pipelines = make_pipelines(2, 5)
        failed: Counter[str] = Counter()
        started = time.monotonic()
        until = started + duration_s
        rates = await asyncio.gather(
            *(_worker(server, concurrency, until, failed, **tuning) for _ in range(workers))
        )
        elapsed = time.monotonic() - started
        accepted = sum(1 for h in server.hits if h.status == 200)
        throttled = sum(1 for h in server.hits if h.status == 429)
    return Result(workers, elapsed, accepted, throttled, failed, list(rates))


def _line(r: Result) -> str:
    return (
        f"{r.workers} worker(s): {r.rate:.2f} req/s accepted = {r.rate / LIMIT:.1%} of {LIMIT}/s, "
        f"{r.throttled} x 429, failed calls: {dict(r.failed) or 0}, "
        f"final limiter rates: {', '.join(f'{x:.2f}' for x in r.final_rates)}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--tune", nargs="*", default=[], help="KommoConfig overrides: name=value")
    args = parser.parse_args()
    tuning = {k: float(v) for k, v in (t.split("=", 1) for t in args.tune)}
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    baseline = await run(1, args.concurrency, args.duration_s, **tuning)
    print(_line(baseline))
    shared = await run(args.workers, args.concurrency, args.duration_s, **tuning)
    print(_line(shared))
    print(f"ratio {args.workers} workers / 1 worker: {shared.rate / baseline.rate:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
