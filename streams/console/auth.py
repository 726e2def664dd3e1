"""Who is asking, and may they: logins, roles, signed session cookies and CSRF tokens.

Two ways in, never anonymous:

- **Token**: ``console.tokens`` (from a Secret) lists ``name:role:token``; the
  login form takes a token, compares it in constant time with each, and
  sets a session cookie (HttpOnly, SameSite=Strict, signed with HMAC-SHA256,
  expiring after ``session_ttl_s``).
- **Trusted proxy**: a request whose peer address is in
  ``console.trusted_proxies`` and carries ``proxy_user_header`` is that
  user (operator if listed in ``proxy_operators``). The header from any
  other address is ignored.

Every session cookie, a visitor's before login included, carries a random
CSRF token; every POST must send it back in its form (``csrf_token``),
and a cross-site ``Origin`` is refused. Roles: ``viewer`` reads,
``operator`` also replays, resolves, purges and pauses.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import time
from dataclasses import dataclass
from typing import Literal

from streams.settings import ConsoleSettings, console_logins

COOKIE = "conveyor_console"
Auth = Literal["token", "proxy", "none"]


@dataclass(frozen=True, slots=True)
class Identity:
    """The person behind a request (``name`` None: not logged in)."""

    name: str | None
    role: str
    auth: Auth
    csrf: str

    @property
    def operator(self) -> bool:
        return self.name is not None and self.role == "operator"


@dataclass(frozen=True, slots=True)
class Session:
    name: str | None
    role: str
    csrf: str
    expires: float


class Authenticator:
    """Checks tokens, proxy headers and cookies against ``console`` settings."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self._settings = settings
        tokens = settings.tokens
        self._logins = console_logins(tokens.get_secret_value()) if tokens else {}
        key = settings.session_key
        self._key = key.get_secret_value().encode() if key is not None else secrets.token_bytes(32)
        self._proxies = [ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies]

    @property
    def token_login(self) -> bool:
        return bool(self._logins)

    def secrets(self) -> list[str]:
        """The configured tokens, each on its own (for log masking)."""
        return list(self._logins)

    def login(self, token: str) -> tuple[str, str] | None:
        """(name, role) of the token, or None; compares with every token in constant time."""
        found = None
        for known, who in self._logins.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = who
        return found

    def trusted(self, address: str | None) -> bool:
        if not address or not self._proxies:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._proxies)

    def proxy_role(self, user: str) -> str:
        operators = self._settings.proxy_operators
        return "operator" if "*" in operators or user in operators else "viewer"

    def new_session(self, name: str | None = None, role: str = "viewer") -> Session:
        return Session(
            name, role, secrets.token_urlsafe(24), time.time() + self._settings.session_ttl_s
        )

    def seal(self, session: Session) -> str:
        body = json.dumps(
            {"n": session.name, "r": session.role, "c": session.csrf, "e": session.expires},
            separators=(",", ":"),
        ).encode()
        data = base64.urlsafe_b64encode(body).decode().rstrip("=")
        return f"{data}.{self._sign(data)}"

    def unseal(self, cookie: str | None) -> Session | None:
        """The session a cookie holds, if its signature is ours and it has not expired."""
        if not cookie or "." not in cookie:
            return None
        data, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(signature, self._sign(data)):
            return None
        try:
            raw = json.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
            session = Session(raw["n"], raw["r"], raw["c"], float(raw["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires > time.time() else None

    def _sign(self, data: str) -> str:
        digest = hmac.new(self._key, data.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def csrf_ok(identity: Identity, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(identity.csrf.encode(), (sent or "").encode())


def same_origin(origin: str | None, host: str | None) -> bool:
    """A browser's ``Origin`` names this host (absent: not a cross-site browser request)."""
    if origin is None:
        return True
    if origin == "null" or not host:
        return False
    return origin.split("://", 1)[-1].rstrip("/") == host
