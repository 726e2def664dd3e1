"""Which Kommo account URLs Conveyor sends secrets and tokens to.

A connection's account URL receives the OAuth client secret, the refresh
token and every access token. It is checked against an allowlist of account
hosts (``crm.allowed_account_hosts``, ``*.kommo.com`` by default) when a
connection is registered and again before every call, so neither a mistyped
``conveyor crm connect`` nor a row edited in the database sends a secret to
another host.

An entry is a host, optionally with a port:

- ``*.kommo.com``: ``https://<one label>.kommo.com`` on the default port; not
  ``kommo.com`` itself, not ``a.b.kommo.com``, not ``acme.kommo.com.evil.example``;
- ``acme.kommo.com``: that host on the default port;
- ``127.0.0.1:*``: that address on any port (tests, the demo's stand-in);
- ``acct.example:8443``: that host on port 8443 only.

Plain ``http`` is admitted only for a loopback address (a stand-in on this
machine); a real account is served over https.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_ACCOUNT_HOSTS = ("*.kommo.com",)
LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NAME = re.compile(rf"^{LABEL}(?:\.{LABEL})+$")
_ENTRY = re.compile(
    r"^(?P<host>\*\.[^:\[\]]+|\[[0-9a-f:.]+\]|[^:\[\]]+)(?::(?P<port>\*|\d{1,5}))?$"
)
DEFAULT_PORTS = {"https": 443, "http": 80}


class AccountNotAllowed(ValueError):
    """An account URL outside the allowlist (the message names the host, never a secret)."""


def origin(base_url: str) -> str:
    """``scheme://host[:port]`` of an account URL; anything else is refused."""
    parts = urlsplit(base_url.strip())
    if any(c.isspace() or not c.isprintable() for c in base_url.strip()):
        raise ValueError("a Kommo account URL has no spaces or control characters")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("a Kommo account URL looks like https://<subdomain>.kommo.com")
    if parts.path.strip("/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("a Kommo account URL has no path, query or credentials")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError("a Kommo account URL's port must be a number") from None
    return f"{parts.scheme}://{parts.netloc.lower()}"


@dataclass(frozen=True, slots=True)
class _Entry:
    host: str  # a name, "*.<domain>", or an address
    port: int | None  # None: the scheme's default port; -1: any port

    def admits(self, host: str, port: int, default_port: int) -> bool:
        if self.port != -1 and port != (default_port if self.port is None else self.port):
            return False
        if self.host.startswith("*."):
            label, _, rest = host.partition(".")
            return rest == self.host[2:] and re.fullmatch(LABEL, label) is not None
        return host == self.host


def parse_entry(text: str) -> _Entry:
    """One allowlist entry; ValueError says what is wrong with it."""
    match = _ENTRY.match(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not host[:port|:*] (e.g. *.kommo.com, 127.0.0.1:*)")
    host, port = match["host"], match["port"]
    name = host[2:] if host.startswith("*.") else host.strip("[]")
    if not (_NAME.match(name) or _is_address(name)) or (host.startswith("*.") and "." not in name):
        raise ValueError(f"{text!r}: {host!r} is not a host name, *.<domain> or an address")
    if port not in (None, "*") and not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: the port must be 1-65535 or *")
    return _Entry(name if not host.startswith("*.") else host, -1 if port == "*" else _int(port))


class AccountHosts:
    """The allowlist of Kommo account hosts (``crm.allowed_account_hosts``)."""

    def __init__(self, entries: Iterable[str] = DEFAULT_ACCOUNT_HOSTS) -> None:
        self.entries = tuple(entries)
        self._parsed = tuple(parse_entry(e) for e in self.entries)

    def check(self, base_url: str) -> str:
        """The account URL's origin if the allowlist admits it; AccountNotAllowed if not."""
        found = origin(base_url)
        parts = urlsplit(found)
        host = (parts.hostname or "").lower()
        default_port = DEFAULT_PORTS[parts.scheme]
        port = parts.port or default_port
        if parts.scheme == "http" and not _is_loopback(host):
            raise AccountNotAllowed(f"{found}: Kommo accounts are served over https")
        if not any(entry.admits(host, port, default_port) for entry in self._parsed):
            raise AccountNotAllowed(
                f"{found} is not an allowed Kommo account (crm.allowed_account_hosts:"
                f" {', '.join(self.entries) or 'empty'})"
            )
        return found

    def __repr__(self) -> str:
        return f"AccountHosts({list(self.entries)!r})"


def _int(port: str | None) -> int | None:
    return None if port is None else int(port)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
