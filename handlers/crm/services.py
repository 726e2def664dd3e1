"""What CRM handlers receive in ``Deps.crm``: the Kommo side, the keyring, the policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

from handlers.crm.connections import Connection
from handlers.crm.crypto import Keyring
from handlers.crm.tokens import ConnectionTokens
from handlers.db import Pool
from handlers.errors import PermanentError
from handlers.providers.kommo import Kommo, KommoClient, kommo_config


@dataclass(frozen=True, slots=True)
class CrmPolicy:
    token_refresh_margin_s: float
    sync_lease_s: float
    message_lease_s: float
    message_settle_s: float
    webhook_max_age_s: float


@dataclass(frozen=True, slots=True)
class CrmServices:
    """Built once per process; shared by every CRM job (one limiter per Kommo account)."""

    kommo: Kommo
    keyring: Keyring
    policy: CrmPolicy

    def tokens(self, db: Pool, connection_id: str, base_url: str) -> ConnectionTokens:
        return ConnectionTokens(
            db,
            connection_id,
            base_url,
            self.keyring,
            self.kommo,
            self.policy.token_refresh_margin_s,
        )

    def client(self, db: Pool, connection: Connection) -> KommoClient:
        """A client of the connection's account; PermanentError if the allowlist refuses it."""
        tokens = self.tokens(db, connection.id, connection.base_url)
        return self.kommo.client(connection.base_url, tokens)


def crm_services(session: aiohttp.ClientSession, crm_settings: Any) -> CrmServices | None:
    """From ``settings.crm`` (read by streams/, passed in); None without a keyring."""
    if crm_settings.keyring is None:
        return None
    return CrmServices(
        Kommo(session, kommo_config(crm_settings)),
        Keyring.parse(crm_settings.keyring.get_secret_value()),
        CrmPolicy(
            crm_settings.token_refresh_margin_s,
            crm_settings.sync_lease_s,
            crm_settings.message_lease_s,
            crm_settings.message_settle_s,
            crm_settings.webhook_max_age_s,
        ),
    )


def require(crm: CrmServices | None) -> CrmServices:
    if crm is None:
        raise PermanentError("CRM is not configured: set the crm.keyring setting")
    return crm
