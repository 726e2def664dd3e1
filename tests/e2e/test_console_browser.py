"""The console in a real browser (headless Chromium), used as an operator and a viewer would.

One worker, `conveyor console` as its own process, two people: Vera
(viewer) and Otto (operator). Each step is what a person does on the pages;
the screenshots it takes are the ones in docs/CONSOLE.md
(CONVEYOR_CONSOLE_SCREENSHOTS=docs/console regenerates them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from schemas.envelope import JobEnvelope
from tests.support.browser import Page, chromium
from tests.support.console import OPERATOR_TOKEN, VIEWER_TOKEN, running_console
from tests.support.dlq import wait_dlq
from tests.support.probe import PROBE_ENV, effects, probe_jobs, wait_done
from tests.support.stack import Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

WORKER = {
    **PROBE_ENV,
    "CONVEYOR_JOBS__PROBE__TIMEOUT_S": "60",
    "CONVEYOR_JOBS__PROBE__BACKOFF_BASE_S": "0.05",
    "CONVEYOR_JOBS__PROBE__BACKOFF_MAX_S": "0.2",
}


@pytest.fixture
def console_url(stack: Stack, tmp_path: Path) -> Iterator[str]:
    """`conveyor console` on the test's stack, stopped when the test ends (passed or not)."""
    with running_console(stack, tmp_path / "console.log") as base:
        yield base


def job(job_id: str, org: str, **payload: Any) -> JobEnvelope:
    return JobEnvelope(id=job_id, type="probe", organization_id=org, payload=payload)


def rows(page: Page, table: str) -> list[str]:
    return [row.text for row in page.all(f"#{table} tbody tr")]


async def test_viewer_and_operator_use_the_console(
    stack: Stack, db: asyncpg.Pool, worker_factory: Any, tmp_path: Path, console_url: str
) -> None:
    p = stack.prefix
    worker = worker_factory(stack, **WORKER, CONVEYOR_JOBS__PROBE__MAX_ATTEMPTS="2")
    worker.wait_ready()
    base = console_url
    slow = job(f"{p}-slow", "acme", sleep_ms=20_000)
    flaky = job(f"{p}-flaky", "acme", fail="retryable", fail_times=3)  # fails twice: dead letter
    broken = job(f"{p}-broken", "beta", fail="permanent")
    stack.publish([slow, flaky, broken], keys=[b"lead-7", b"lead-8", b"lead-9"])
    await wait_dlq(db, stack, 2)

    with chromium(base, tmp_path / "vera") as vera:
        vera.login(VIEWER_TOKEN)
        assert vera.find("#role").text == "viewer"
        # The fleet: the worker and its running job, with its key and organization.
        vera.until(lambda pg: slow.id in pg.find("#running").text, "the slow job shown running")
        assert len(rows(vera, "workers")) == 1 and "running" in rows(vera, "workers")[0]
        running = rows(vera, "running")[0]
        assert "acme" in running and "lead-7" in running
        vera.screenshot("fleet")
        # A dead letter found by filter; its page shows what failed, and no actions.
        vera.open("/dlq").fill("#f-org", "acme").click("#f-apply")
        assert vera.find("#total").text == "1"
        (listed,) = rows(vera, "dead-letters")
        assert flaky.id in listed and "RetryableError" in listed
        vera.click("#dead-letters tbody a")
        assert flaky.id in vera.find("#job-id").text and not vera.all("#replay")
        dead_id = vera.path.rsplit("/", 1)[-1]
        # Replaying as a viewer: the confirmation and a hand-made POST are both refused.
        vera.open(f"/dlq/confirm?action=replay&id={dead_id}")
        assert "403" in vera.find("h1").text
        csrf = vera.open(f"/dlq/{dead_id}").find("input[name=csrf_token]").get_attribute("value")
        vera.post_form("/dlq/act", {"csrf_token": csrf or "", "action": "replay", "id": dead_id})
        assert "operator role" in vera.find("#error").text

    # The fix: a policy with enough attempts (the worker restarts with it).
    worker.stop()
    worker = worker_factory(stack, **WORKER, CONVEYOR_JOBS__PROBE__MAX_ATTEMPTS="5")
    worker.wait_ready()

    with chromium(base, tmp_path / "otto") as otto:
        otto.login(OPERATOR_TOKEN)
        # A POST without the CSRF token is refused, even from the operator.
        otto.open("/dlq").post_form("/dlq/act", {"action": "purge", "id": dead_id, "count": "1"})
        assert "CSRF" in otto.find("#error").text
        assert await db.fetchval("SELECT count(*) FROM worker_dlq WHERE id = $1", int(dead_id))
        # Replay the dead letter: the confirmation states the count, the job then runs.
        otto.open(f"/dlq/{dead_id}").screenshot("dead-letter")
        otto.click("#replay")
        assert "1 dead letter(s)" in otto.find("#confirm-count").text
        otto.screenshot("confirm-replay")
        otto.click("#confirm")
        assert otto.find("#audit-action").text == "dlq.replay"
        assert otto.find("#audit-rows").text == "1"
        await wait_done(db, [flaky], what="the replayed job processed")
        otto.open(f"/find?q={flaky.id}")
        otto.until(lambda pg: "succeeded" in pg.text, "the ledger row of the replayed job")
        otto.screenshot("find")

        # Pause the type: the worker stops starting it; resume: it runs what waited.
        otto.open("/control").select("#pause-type", "probe").fill("#pause-reason", "upstream down")
        otto.click("#pause")
        assert "upstream down" in otto.find("#pauses").text
        otto.open("/").until(
            lambda pg: "Paused" in pg.text and "running" in pg.find("#workers").text,
            "the pause on the fleet page",
        )
        held = probe_jobs(5, max_sleep_ms=0)
        stack.publish(held)
        otto.until(lambda pg: "5 held" in pg.find("#workers").text, "5 jobs held by the worker")
        assert (await effects(db, held)).distinct == 0
        otto.screenshot("fleet-paused")
        otto.open("/control").screenshot("pause")
        otto.click("#pauses button.resume")
        assert "Nothing is paused" in otto.find("#pauses").text
        final = await wait_done(db, held, what="the held jobs run after the resume")
        assert final.total == 5 and final.duplicated == 0

        otto.open("/audit")
        actions = [r.split()[7] if len(r.split()) > 7 else r for r in rows(otto, "audit")]
        done = otto.find("#audit").text
        for action in ("login", "dlq.replay", "pause", "resume"):
            assert action in done, f"{action} not audited: {actions}"
        otto.screenshot("audit")
        otto.open("/crm").screenshot("crm")
    await eventually(lambda: _audit_count(db), lambda n: n >= 5, 5, "the audit rows")


async def _audit_count(db: asyncpg.Pool) -> int:
    n: int = await db.fetchval("SELECT count(*) FROM console_audit")
    return n
