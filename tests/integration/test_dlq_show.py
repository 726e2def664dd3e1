"""conveyor dlq show / stats and the wider selection (organization, error class, keyset pages)."""

from __future__ import annotations

import json

import asyncpg
import pytest

from schemas.envelope import JobEnvelope
from streams.commands import dlq
from tests.support.cli import conveyor
from tests.support.dlq import insert_dead_letters
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

SECRET = "whsec-0123456789abcdef"


def jobs(n: int, org: str, prefix: str) -> list[JobEnvelope]:
    return [
        JobEnvelope(id=f"{prefix}-{org}-{i}", type="probe", organization_id=org, payload={})
        for i in range(n)
    ]


async def test_show_masks_secrets_and_lists_the_jobs_lineage(
    services: object, db: asyncpg.Pool
) -> None:
    stack = Stack(services.bootstrap, services.dsn)  # type: ignore[attr-defined]
    topic = f"{stack.prefix}.dlq"
    hook = JobEnvelope(
        id=f"{stack.prefix}-hook",
        type="crm.webhook",
        organization_id="acme",
        payload={"connection_id": "c1", "event_id": "e1", "signature": SECRET, "body": "{}"},
    )
    (first,) = await insert_dead_letters(
        db, topic, [hook], headers={"authorization": "Bearer t0k3n-abcdef"}
    )
    (again,) = await insert_dead_letters(db, topic, [hook], first_offset=1)

    done = conveyor("dlq", "show", str(first), env=stack.env)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert SECRET not in text and "t0k3n-abcdef" not in text and "**********" in text
    assert "crm.webhook" in text and "PermanentError" in text and "Traceback" in text
    assert str(again) in text, "the same job's later dead letter is in the lineage"

    shown = json.loads(conveyor("dlq", "show", str(first), "--json", env=stack.env).stdout)
    assert shown["organization_id"] == "acme" and shown["lineage"] == [first, again]
    assert json.loads(shown["payload"])["payload"]["signature"] == "**********"
    missing = conveyor("dlq", "show", "999999999", env=stack.env)
    assert missing.returncode == 1 and "no dead letter" in missing.stderr


async def test_selection_by_organization_and_error_class_pages_and_stats(
    services: object, db: asyncpg.Pool
) -> None:
    stack = Stack(services.bootstrap, services.dsn)  # type: ignore[attr-defined]
    topic = f"{stack.prefix}.dlq"
    acme = await insert_dead_letters(db, topic, jobs(7, "acme", stack.prefix))
    beta = await insert_dead_letters(
        db,
        topic,
        jobs(3, "beta", stack.prefix),
        error_class="JobTimeout",
        stage="timeout",
        first_offset=100,
    )
    async with db.acquire() as conn:
        sel = dlq.Selection(organization="acme")
        assert await dlq.count(conn, topic, sel) == 7
        assert await dlq.count(conn, topic, dlq.Selection(error_class="JobTimeout")) == 3
        first = await dlq.page(conn, topic, sel, None, 4)
        second = await dlq.page(conn, topic, sel, first[-1]["id"], 4)
        assert [r["id"] for r in first + second] == sorted(acme, reverse=True)
        assert all(r["organization_id"] == "acme" for r in first)
        resolved = await dlq.resolve_selected(conn, topic, dlq.Selection(ids=beta[:1]), "ok")
        assert resolved == beta[:1]
        purged = await dlq.purge_selected(
            conn, topic, dlq.Selection(organization="beta", statuses=("resolved",))
        )
        assert purged == beta[:1]

    done = conveyor("dlq", "stats", env=stack.env)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if "probe" in line]
    assert any("handle" in line and " 7 " in line for line in lines), done.stdout
    assert any("timeout" in line and " 2 " in line for line in lines), done.stdout
    listed = conveyor("dlq", "list", "--org", "beta", "--error-class", "JobTimeout", env=stack.env)
    assert listed.stdout.count(f"{stack.prefix}-beta") == 2
