"""Rate-limiting benchmark: many concurrent embedding jobs against a server enforcing N/min.

The local OpenAI-compatible server (tests/support/openai_server.py) allows N
requests per minute (token bucket, burst of one second's worth) and answers
429 with ``Retry-After``/``retry-after-ms`` beyond that. Concurrent jobs call
the real ``OpenAIEmbedder`` through the shared limits for ``--duration-s``.

Two scenarios, each measured in its own run:

- ``matched``: the worker's limiter is set to N, as configured in production;
- ``overdriven``: the worker's limiter is set to 2 x N (a wrong setting, or a
  quota shared with another client), so the server's 429s set the pace.

Target: achieved rate ≥ 95 % of N and no job failed because of 429.

    .venv/bin/python -m bench.ratelimit [--rpm 600] [--duration-s 25] [--concurrency 32]
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
from pydantic import SecretStr

from handlers.errors import JobError
from handlers.providers.embed import OpenAIEmbedder
from handlers.providers.limits import Budget, RateLimits
from handlers.providers.openai_api import ApiClient
from streams.providers import api_config
from streams.settings import Settings
from tests.support.openai_server import API_KEY, OpenAIServer, openai_server

TEXTS_PER_JOB = 4


@dataclass(frozen=True)
class Result:
    scenario: str
    rpm: int
    client_rpm: int
    elapsed_s: float
    succeeded_requests: int
    throttled_requests: int
    jobs_ok: int
    jobs_failed: Counter[str]

    @property
    def burst(self) -> int:
        return int(max(1.0, self.rpm / 60.0))

    @property
    def achieved_rpm(self) -> float:
        """Answered requests per minute, not counting the server's initial burst allowance."""
        return (self.succeeded_requests - self.burst) / self.elapsed_s * 60.0

    def lines(self) -> list[str]:
        ratio = self.achieved_rpm / self.rpm
        failed = sum(self.jobs_failed.values())
        return [
            f"scenario {self.scenario}: server limit {self.rpm}/min,"
            f" worker limiter {self.client_rpm}/min, {self.elapsed_s:.1f} s",
            f"  achieved {self.achieved_rpm:.1f} requests/min = {ratio:.1%} of the limit"
            f" ({self.succeeded_requests} answered, of which {self.burst} initial burst;"
            f" {self.throttled_requests} got 429)",
            f"  jobs: {self.jobs_ok} succeeded, {failed} failed"
            + (f" {dict(self.jobs_failed)}" if failed else ""),
        ]


async def _job_loop(embedder: OpenAIEmbedder, n: int, end: float, tally: Counter[str]) -> None:
    i = 0
    while time.monotonic() < end:
        texts = [f"job {n} call {i} text {k}" for k in range(TEXTS_PER_JOB)]
        i += 1
        try:
            vectors = await embedder.embed(texts, f"org-{n % 4}")
        except JobError as exc:
            reason = "429" if "429" in str(exc) else type(exc).__name__
            tally[f"failed:{reason}"] += 1
            continue
        assert len(vectors) == TEXTS_PER_JOB
        tally["ok"] += 1


async def run_scenario(
    name: str, rpm: int, client_rpm: int, duration_s: float, concurrency: int
) -> Result:
    async with openai_server() as server, aiohttp.ClientSession() as session:
        server.limit(per_minute=rpm, burst=int(max(1.0, rpm / 60.0)))
        embedder = OpenAIEmbedder(_client(server, session, client_rpm), 64, TEXTS_PER_JOB)
        tally: Counter[str] = Counter()
        started = time.monotonic()
        end = started + duration_s
        await asyncio.gather(*(_job_loop(embedder, n, end, tally) for n in range(concurrency)))
        elapsed = time.monotonic() - started
    statuses = Counter(h.status for h in server.hits)
    failed = Counter({k.removeprefix("failed:"): v for k, v in tally.items() if k != "ok"})
    return Result(name, rpm, client_rpm, elapsed, statuses[200], statuses[429], tally["ok"], failed)


def _client(server: OpenAIServer, session: aiohttp.ClientSession, client_rpm: int) -> ApiClient:
    """The production defaults of EmbeddingSettings, except the request budget.

    ``rate_limit_wait_s`` is what the worker derives: half of asset.process's 300 s timeout.
    """
    settings = Settings()
    embedding = settings.embedding.model_copy(
        update={"base_url": server.base_url, "api_key": SecretStr(API_KEY), "model": "bench-embed"}
    )
    wait_s = settings.jobs.asset_process.timeout_s / 2
    config = api_config(embedding, wait_s, "embedding API")
    budget = Budget(client_rpm, 1_000_000, org_requests_per_minute=None)
    return ApiClient(session, config, RateLimits(budget))


async def main(args: argparse.Namespace) -> int:
    # Each 429 logs a line; the figures below are what this run is for.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    scenarios = {"matched": args.rpm, "overdriven": 2 * args.rpm}
    chosen = scenarios if args.scenario == "all" else {args.scenario: scenarios[args.scenario]}
    ok = True
    for name, client_rpm in chosen.items():
        result = await run_scenario(name, args.rpm, client_rpm, args.duration_s, args.concurrency)
        print("\n".join(result.lines()), flush=True)
        ok &= result.achieved_rpm >= 0.95 * args.rpm and not result.jobs_failed
    print("target met" if ok else "TARGET MISSED")
    return 0 if ok else 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpm", type=int, default=600, help="the server's requests per minute")
    parser.add_argument("--duration-s", type=float, default=25.0, help="per scenario")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent jobs")
    parser.add_argument("--scenario", choices=["all", "matched", "overdriven"], default="all")
    return parser.parse_args()


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parse_args())))
