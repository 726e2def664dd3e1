"""Three workers on one Kommo account: the limit used, no job failed by 429.

Each worker has its own session, limiter and Postgres pool, as three pods
would (tests/support/kommo_load.py); together they run the real
``crm.sync_pipelines`` handler on twelve connections of one local account
that accepts 7 requests in any second.

The utilisation bound: bench/kommo_limit.py measures about 95 % for three
workers (docs/BENCHMARKS.md, "Kommo's rate limit"); the test asks for the
issue's 90 %, five points under, for a shorter run on a loaded machine.
"""

from __future__ import annotations

import pytest

from handlers.types import Outcome
from tests.support.kommo_load import run_workers, small_account
from tests.support.kommo_server import kommo_server
from tests.support.services import Endpoints

pytestmark = pytest.mark.integration

DURATION_S = 20.0


@pytest.mark.timeout(90)
async def test_three_workers_use_the_account_limit_and_no_job_fails_by_429(
    services: Endpoints,
) -> None:
    async with kommo_server(rate_limit=7) as server:
        small_account(server)
        load = await run_workers(
            services.dsn, server, workers=3, concurrency=4, duration_s=DURATION_S
        )
    assert load.failed == 0, load.line()
    assert load.jobs[Outcome.SUCCEEDED.value] > 0
    assert load.throttled > 0, "the workers never met the account's limit: nothing was shared"
    assert load.utilisation >= 0.90, load.line()
