"""Helpers for CRM tests: the Kommo client's config from settings, an in-memory token source."""

from __future__ import annotations

import dataclasses
from typing import Any

from handlers.providers.kommo import Kommo, KommoConfig, OAuthApp, kommo_config
from streams.settings import Settings
from tests.support.kommo_server import CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, KommoServer

APP = OAuthApp(CLIENT_ID, CLIENT_SECRET, REDIRECT_URI)


def config(**overrides: Any) -> KommoConfig:
    """The production defaults (settings.crm), with quick backoffs unless overridden."""
    base = kommo_config(Settings().crm)
    quick = {"backoff_base_s": 0.01, "backoff_max_s": 2.0, "timeout_s": 2.0}
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
