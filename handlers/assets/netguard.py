"""SSRF guard: which addresses a user-supplied URL may reach.

Classification is a pure function so it can be tested without sending a
packet. The resolver wrapper applies it to every DNS answer, so a redirect
or a DNS rebind to an internal address is refused as well.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud metadata endpoints beyond the link-local range.
_METADATA = (
    ipaddress.ip_network("169.254.169.254/32"),
    ipaddress.ip_network("fd00:ec2::254/128"),
    ipaddress.ip_network("100.100.100.200/32"),
)


class BlockedAddressError(Exception):
    """The URL resolves to an address the guard refuses."""


class Allowlist:
    """Hostnames and CIDRs let through despite the guard (e.g. loopback in tests)."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.hosts: set[str] = set()
        self.networks: list[IPNetwork] = []
        for entry in entries:
            try:
                self.networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                self.hosts.add(entry.strip().lower().rstrip("."))

    def allows(self, host: str, address: IPAddress) -> bool:
        return host.lower().rstrip(".") in self.hosts or any(
            address in net for net in self.networks
        )


def refusal_reason(address: IPAddress) -> str | None:
    """Why ``address`` must not be reached, or None when it is a public address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return refusal_reason(address.ipv4_mapped)
    if any(address in net for net in _METADATA):
        return "a cloud metadata address"
    checks = (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("private", address.is_private),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("unspecified", address.is_unspecified),
        ("not globally routable", not address.is_global),
    )
    for label, hit in checks:
        if hit:
            return f"a {label} address"
    return None


def check_address(host: str, address: str, allowlist: Allowlist) -> None:
    """Raise BlockedAddressError unless ``address`` (resolved from ``host``) may be reached."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if allowlist.allows(host, ip):
        return
    reason = refusal_reason(ip)
    if reason is not None:
        raise BlockedAddressError(f"refusing to fetch from {host}: it resolves to {reason}")


def check_literal_host(host: str, allowlist: Allowlist) -> None:
    """Check a URL host that is an IP literal (aiohttp skips the resolver for those)."""
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return
    check_address(host, host.strip("[]"), allowlist)


class GuardedResolver(AbstractResolver):
    """A resolver that drops nothing silently: any refused answer fails the request."""

    def __init__(self, allowlist: Allowlist, inner: AbstractResolver | None = None) -> None:
        self._allowlist = allowlist
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            check_address(host, result["host"], self._allowlist)
        return results

    async def close(self) -> None:
        await self._inner.close()


def guarded_connector_kwargs(allowlist: Allowlist) -> dict[str, Any]:
    """Keyword arguments for ``aiohttp.TCPConnector`` that enforce the guard."""
    return {"resolver": GuardedResolver(allowlist), "use_dns_cache": False}
