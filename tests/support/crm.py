"""Helpers for CRM tests: the Kommo client's config from settings, an in-memory token source."""

from __future__ import annotations

import base64
import dataclasses
import os
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import aiohttp
import asyncpg
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic import BaseModel

from handlers.crm.connections import NewConnection, legacy_context, register
from handlers.crm.crypto import Keyring, new_key
from handlers.crm.services import CrmPolicy, CrmServices
from handlers.crm.webhook import signature_of
from handlers.deps import Deps
from handlers.providers.embed import HashEmbedder
from handlers.providers.kommo import Kommo, KommoConfig, kommo_config
from handlers.providers.kommo_oauth import OAuthApp
from handlers.types import Job
from schemas.jobs import CrmWebhook
from streams.settings import Settings
from tests.support.fakes import NoFollowUps
from tests.support.kommo_server import (
    ACCOUNT_ID,
    CLIENT_ID,
    CLIENT_SECRET,
    REDIRECT_URI,
    KommoServer,
    form_encode,
)
from tests.support.policies import CHUNKING, EXTRACT, FETCH, KNOWLEDGE_GRAPH

APP = OAuthApp(CLIENT_ID, CLIENT_SECRET, REDIRECT_URI)
# The test servers are Kommo accounts on 127.0.0.1 at random ports (the setting's text
# for a worker subprocess: tests/support/stack.py).
LOOPBACK_ACCOUNTS = ("127.0.0.1:*",)
P = TypeVar("P", bound=BaseModel)


def config(**overrides: Any) -> KommoConfig:
    """The production defaults (settings.crm), with quick backoffs unless overridden, and
    the loopback stand-ins (tests/support/kommo_server.py) admitted as accounts."""
    base = kommo_config(Settings().crm)
    quick = {
        "backoff_base_s": 0.01,
        "backoff_max_s": 2.0,
        "timeout_s": 2.0,
        "allowed_account_hosts": LOOPBACK_ACCOUNTS,
    }
    return dataclasses.replace(base, **{**quick, **overrides})


class MemoryTokens:
    """A TokenSource for one connection, kept in memory, refreshed at the real endpoint."""

    def __init__(self, kommo: Kommo, server: KommoServer, expires_in: int | None = None) -> None:
        pair = server.grant(expires_in)
        self.kommo, self.server = kommo, server
        self.access, self.refresh = pair.access_token, pair.refresh_token
        self.refreshes = 0

    async def access_token(self) -> str:
        return self.access

    async def refreshed_after(self, rejected: str) -> str:
        if rejected == self.access:
            grant = await self.kommo.refresh(self.server.base_url, APP, self.refresh)
            self.access, self.refresh = grant.access_token, grant.refresh_token
            self.refreshes += 1
        return self.access


def seal_v1(keyring: Keyring, plaintext: str, connection_id: str, column: str) -> str:
    """A secret as the version before the account binding wrote it (format v1: its
    associated data names the row and column only), under the keyring's current key."""
    nonce = os.urandom(12)
    aad = legacy_context(connection_id, column).encode()
    sealed = AESGCM(keyring.keys[keyring.current]).encrypt(nonce, plaintext.encode(), aad)
    return f"v1:{keyring.current}:{base64.b64encode(nonce + sealed).decode()}"


WEBHOOK_SECRET = "whsec-test-0123456789abcdef0123456789"


def signed_hook(
    secret: str,
    connection_id: str,
    body: str,
    *,
    event_id: str | None = None,
    timestamp: int | None = None,
) -> CrmWebhook:
    """A crm.webhook payload as the platform's edge signs it (docs/KOMMO.md)."""
    event_id = event_id or f"evt-{uuid.uuid4().hex[:10]}"
    when = int(time.time()) if timestamp is None else timestamp
    return CrmWebhook(
        connection_id=connection_id,
        event_id=event_id,
        timestamp=when,
        signature=signature_of(secret, connection_id, event_id, when, body),
        body=body,
    )


def delivery_body(tree: Mapping[str, Any], subdomain: str = "conveyor-test") -> str:
    """Kommo's form-encoded webhook body for ``tree``, naming the account (the stand-in's
    subdomain by default)."""
    return form_encode({**tree, "account": {"id": ACCOUNT_ID, "subdomain": subdomain}})


# This process's keyring; a worker subprocess gets the same text (``worker_env``).
KEYRING_TEXT = f"k1:{new_key()}"
KEYRING = Keyring.parse(KEYRING_TEXT)


async def register_account(
    db: asyncpg.Pool,
    server: KommoServer,
    *,
    expires_in_s: float = 3600.0,
    keyring: Keyring = KEYRING,
    webhook_secret: str = WEBHOOK_SECRET,
    organization_id: str = "org-1",
) -> NewConnection:
    """A connection to ``server`` as the platform's consent would register it."""
    pair = server.grant()
    new = NewConnection(
        id=f"conn-{uuid.uuid4().hex[:12]}",
        organization_id=organization_id,
        base_url=server.base_url,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uri=REDIRECT_URI,
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        access_expires_at=datetime.now(UTC) + timedelta(seconds=expires_in_s),
        webhook_secret=webhook_secret,
        account_subdomain=server.subdomain,  # the stand-in's URL is an address
    )
    async with db.acquire() as conn:
        await register(conn, keyring, new)
    return new


def services(
    session: aiohttp.ClientSession,
    keyring: Keyring = KEYRING,
    *,
    policy: Mapping[str, float] | None = None,
    **overrides: Any,
) -> CrmServices:
    """CrmServices as a worker builds them, with quick backoffs; ``policy`` overrides
    CrmPolicy fields (``message_lease_s``...), ``overrides`` the client's config."""
    crm = Settings().crm
    base = CrmPolicy(
        crm.token_refresh_margin_s,
        crm.sync_lease_s,
        crm.message_lease_s,
        crm.message_settle_s,
        crm.webhook_max_age_s,
    )
    chosen = dataclasses.replace(base, **(policy or {}))
    return CrmServices(Kommo(session, config(**overrides)), keyring, chosen)


def crm_deps(db: asyncpg.Pool, session: aiohttp.ClientSession, crm: CrmServices | None) -> Deps:
    """The Deps a worker hands CRM handlers (the asset parts are unused)."""
    return Deps(
        db=db,
        http=session,
        embedder=HashEmbedder(8),
        publisher=NoFollowUps(),
        chunking=CHUNKING,
        fetch=FETCH,
        knowledge_graph=KNOWLEDGE_GRAPH,
        extract=EXTRACT,
        crm=crm,
    )


def job(
    job_type: str,
    payload: P,
    job_id: str | None = None,
    attempt: int = 1,
    created_at: datetime | None = None,
) -> Job[P]:
    job_id = job_id or f"job-{uuid.uuid4().hex[:12]}"
    return Job(job_id, job_type, attempt, "org-1", payload, created_at=created_at)
