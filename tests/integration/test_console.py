"""The console over HTTP: no anonymous access, roles, CSRF, confirmations, audit, pauses.

The browser tests (tests/e2e/test_console_browser.py) walk the same pages as
a person; these check each rule directly, including the requests a browser
would never send.
"""

from __future__ import annotations

import asyncpg
import pytest

from schemas.envelope import JobEnvelope
from streams.fleet import pauses_snapshot
from tests.support.console import (
    OPERATOR_TOKEN,
    VIEWER_TOKEN,
    console_client,
    csrf_of,
    login,
)
from tests.support.dlq import insert_dead_letters
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


def jobs(n: int, prefix: str, org: str = "acme") -> list[JobEnvelope]:
    return [
        JobEnvelope(id=f"{prefix}-{i}", type="probe", organization_id=org, payload={"fail": "x"})
        for i in range(n)
    ]


async def audit_actions(db: asyncpg.Pool, since_id: int) -> list[tuple[str, str, str, str]]:
    rows = await db.fetch(
        "SELECT actor, role, auth, action FROM console_audit WHERE id > $1 ORDER BY id", since_id
    )
    return [(r["actor"], r["role"], r["auth"], r["action"]) for r in rows]


async def test_no_anonymous_access_and_logins_are_audited(stack: Stack, db: asyncpg.Pool) -> None:
    start = await db.fetchval("SELECT coalesce(max(id), 0) FROM console_audit")
    async with console_client(stack) as client:
        r = await client.get("/dlq", allow_redirects=False)
        assert r.status == 303 and r.headers["Location"].startswith("/login?next=%2Fdlq")
        assert (await client.post("/dlq/act", data={"action": "purge"})).status == 403
        bad = await login(client, "not-a-token-at-all-000000000")
        assert bad.status == 401 and "Unknown token" in await bad.text()
        ok = await login(client, VIEWER_TOKEN)
        assert ok.status == 303
        page = await client.get("/")
        html = await page.text()
        assert page.status == 200 and "vera" in html and "viewer" in html
        assert page.headers["X-Frame-Options"] == "DENY"
        assert "script-src 'none'" in page.headers["Content-Security-Policy"]
        await client.post("/logout", data={"csrf_token": csrf_of(html)})
        r = await client.get("/", allow_redirects=False)
        assert r.status == 303, "logged out"
    assert await audit_actions(db, start) == [
        ("anonymous", "viewer", "none", "login_failed"),
        ("vera", "viewer", "token", "login"),
        ("vera", "viewer", "token", "logout"),
    ]


async def test_viewer_cannot_act_and_a_post_without_csrf_is_refused(
    stack: Stack, db: asyncpg.Pool
) -> None:
    topic = stack.settings().kafka.dlq_topic
    (row,) = await insert_dead_letters(db, topic, jobs(1, stack.prefix))
    async with console_client(stack) as client:
        await login(client, VIEWER_TOKEN)
        detail = await client.get(f"/dlq/{row}")
        html = await detail.text()
        assert detail.status == 200 and "Replay…" not in html
        csrf = csrf_of(html)
        form = {"csrf_token": csrf, "action": "replay", "id": str(row), "count": "1"}
        assert (await client.post("/dlq/act", data=form)).status == 403
        assert (await client.get(f"/dlq/confirm?action=purge&id={row}")).status == 403
        pause = {"csrf_token": csrf, "job_type": "probe", "reason": "x"}
        assert (await client.post("/control/pause", data=pause)).status == 403

    async with console_client(stack) as client:
        await login(client, OPERATOR_TOKEN)
        form = {"action": "purge", "id": str(row), "count": "1"}
        forged = await client.post("/dlq/act", data=form)
        assert forged.status == 403 and "CSRF" in await forged.text()
        page = await client.get(f"/dlq/{row}")
        csrf = csrf_of(await page.text())
        cross = await client.post(
            "/dlq/act", data={**form, "csrf_token": csrf}, headers={"Origin": "http://evil.test"}
        )
        assert cross.status == 403, "a cross-site Origin is refused even with the token"
    assert await db.fetchval("SELECT count(*) FROM worker_dlq WHERE id = $1", row) == 1


async def test_bulk_actions_state_their_count_and_are_audited(
    stack: Stack, db: asyncpg.Pool
) -> None:
    topic = stack.settings().kafka.dlq_topic
    acme = await insert_dead_letters(db, topic, jobs(5, f"{stack.prefix}-a"))
    beta = await insert_dead_letters(
        db, topic, jobs(2, f"{stack.prefix}-b", "beta"), first_offset=50
    )
    async with console_client(stack) as client:
        await login(client, OPERATOR_TOKEN)
        listing = await (await client.get("/dlq?org=acme")).text()
        assert all(f'data-id="{i}"' in listing for i in acme)
        assert not any(f'data-id="{i}"' in listing for i in beta)
        page = await client.get("/dlq/confirm?action=resolve&org=acme")
        html = await page.text()
        assert "<b>5</b> dead letter(s)" in html
        csrf = csrf_of(html)
        form = {"csrf_token": csrf, "action": "resolve", "org": "acme", "note": "fixed upstream"}
        stale = await client.post("/dlq/act", data={**form, "count": "4"})
        assert stale.status == 409, "the stated count no longer matches: confirm again"
        done = await client.post("/dlq/act", data={**form, "count": "5"}, allow_redirects=False)
        assert done.status == 303 and done.headers["Location"].startswith("/audit/")
        entry = await (await client.get(done.headers["Location"])).text()
        assert "dlq.resolve" in entry and 'id="audit-rows">5<' in entry
    statuses = await db.fetch("SELECT status FROM worker_dlq WHERE id = ANY($1)", acme + beta)
    assert sorted(r["status"] for r in statuses) == ["new"] * 2 + ["resolved"] * 5


async def test_a_pause_from_the_console_reaches_the_control_topic(stack: Stack) -> None:
    async with console_client(stack) as client:
        await login(client, OPERATOR_TOKEN)
        csrf = csrf_of(await (await client.get("/control")).text())
        form = {
            "csrf_token": csrf,
            "job_type": "probe",
            "organization_id": "acme",
            "reason": "quota",
        }
        r = await client.post("/control/pause", data=form, allow_redirects=False)
        assert r.status == 303
        page = await (await client.get("/control")).text()
        assert 'data-paused="probe@acme"' in page and "otto (console)" in page
    pauses = (await pauses_snapshot(stack.settings())).current()
    assert [(p.job_type, p.organization_id, p.reason) for p in pauses] == [
        ("probe", "acme", "quota")
    ]


async def test_a_proxy_header_counts_only_from_a_trusted_address(stack: Stack) -> None:
    header = {"X-Forwarded-User": "pat"}
    async with console_client(stack, CONVEYOR_CONSOLE__TRUSTED_PROXIES="127.0.0.2/32") as client:
        r = await client.get("/", headers=header, allow_redirects=False)
        assert r.status == 303, "the test client's 127.0.0.1 is not a listed proxy"
    trusted = {
        "CONVEYOR_CONSOLE__TRUSTED_PROXIES": "127.0.0.1/32",
        "CONVEYOR_CONSOLE__PROXY_OPERATORS": "olga",
    }
    async with console_client(stack, **trusted) as client:
        r = await client.get("/", headers=header)
        assert r.status == 200 and 'id="role">viewer<' in await r.text()
        r = await client.get("/", headers={"X-Forwarded-User": "olga"})
        assert 'id="role">operator<' in await r.text()
