"""A connection's secrets go to its own account only, even after its row was edited.

Real Postgres, real local Kommo stand-ins on loopback. The row's base_url is
rewritten in the database (what an attacker with write access, or a careless
UPDATE, could do): the secrets are bound to the account URL they were
registered with, so they no longer decrypt and nothing is sent anywhere.
"""

from __future__ import annotations

import aiohttp
import asyncpg
import pytest

from handlers.crm import sync
from handlers.errors import PermanentError
from schemas.jobs import CrmSyncPipelines
from tests.support.crm import crm_deps, job, register_account, services
from tests.support.kommo_server import kommo_server, make_pipelines

pytestmark = pytest.mark.integration


async def test_an_edited_account_url_gets_neither_token_nor_refresh(
    db: asyncpg.Pool, session: aiohttp.ClientSession
) -> None:
    async with kommo_server() as own, kommo_server() as other:
        own.pipelines = other.pipelines = make_pipelines(1, 3)
        # expired: the first call would refresh, sending client_secret and refresh_token
        new = await register_account(db, own, expires_in_s=-60)
        await db.execute(
            "UPDATE crm_connections SET base_url = $2 WHERE id = $1", new.id, other.base_url
        )
        deps = crm_deps(db, session, services(session))
        try:
            with pytest.raises(PermanentError) as caught:
                payload = CrmSyncPipelines(connection_id=new.id)
                await sync.handle(job("crm.sync_pipelines", payload), deps)
        finally:  # its secrets no longer decrypt: rotate-key tests expect every row to
            await db.execute("DELETE FROM crm_connections WHERE id = $1", new.id)
        assert "does not decrypt" in str(caught.value)
        assert sum(other.calls.values()) == 0, "the edited account URL got no request"
        assert sum(own.calls.values()) == 0
        assert other.token_grants == []
