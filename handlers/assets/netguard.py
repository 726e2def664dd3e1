"""SSRF guard: which hosts, addresses and ports a user-supplied URL may reach.

Classification is a pure function so it can be tested without sending a
packet. The resolver wrapper applies it to every DNS answer, so a redirect
or a DNS rebind to an internal address is refused as well. Hosts written as
numbers in a non-canonical form (``2130706434``, ``0x7f.1``, ``127.2``) are
refused before any lookup; only ports 80 and 443 are reached unless the
allowlist names another (syntax: ``Allowlist``, docs/SECURITY.md).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import string
from collections.abc import Iterable
from dataclasses import dataclass
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
_6TO4 = ipaddress.ip_network("2002::/16")
_TEREDO = ipaddress.ip_network("2001::/32")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class BlockedAddressError(Exception):
    """The URL's host, address or port is one the guard refuses."""


DEFAULT_PORTS = frozenset({80, 443})
ANY_PORT = None  # an entry's ``ports`` when it says ``host:*``


@dataclass(frozen=True, slots=True)
class AllowEntry:
    """One allowlist entry: a hostname, an address/CIDR or ``*`` (any host), and its ports.

    ``ports`` is ``None`` for ``host:*`` (every port); an entry without a
    port admits only 80 and 443.
    """

    host: str | None = None
    network: IPNetwork | None = None
    ports: frozenset[int] | None = DEFAULT_PORTS

    def matches(self, host: str, address: IPAddress | None) -> bool:
        """Whether this entry names ``host`` or ``address`` (``*`` names none)."""
        if self.host is not None:
            return self.host == _norm_host(host)
        return self.network is not None and address is not None and address in self.network

    def admits(self, port: int) -> bool:
        return self.ports is None or port in self.ports


def parse_entry(text: str) -> AllowEntry:
    """Parse ``host``, ``host:port``, ``host:*``, ``10.0.0.0/8:9000``, ``[fd00::1]:*``, ``*:8443``.

    Raises ValueError for an entry that is none of these.
    """
    entry = text.strip()
    target, ports = _split_port(entry)
    if not target:
        raise ValueError(f"allowlist entry {text!r} names no host")
    if target == "*":
        if ports is None or ports == DEFAULT_PORTS:
            raise ValueError(f"allowlist entry {text!r}: '*' needs one port, as in *:8443")
        return AllowEntry(ports=ports)
    try:
        return AllowEntry(network=ipaddress.ip_network(target, strict=False), ports=ports)
    except ValueError:
        pass
    if _ends_in_number(target) or not _HOSTNAME.fullmatch(target):
        raise ValueError(f"allowlist entry {text!r} is not a hostname, address or CIDR")
    return AllowEntry(host=_norm_host(target), ports=ports)


def _split_port(entry: str) -> tuple[str, frozenset[int] | None]:
    """(host part, ports) of an entry; an entry without a port means 80 and 443."""
    if entry.startswith("["):
        close = entry.find("]")
        if close < 0:
            raise ValueError(f"allowlist entry {entry!r} lacks its closing ']'")
        rest = entry[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"allowlist entry {entry!r}: expected ':port' after ']'")
        return entry[1:close], _ports(entry, rest[1:]) if rest else DEFAULT_PORTS
    if entry.count(":") == 1:  # host:port (an IPv6 entry has more colons; bracket it for a port)
        host, _, port = entry.partition(":")
        return host, _ports(entry, port)
    return entry, DEFAULT_PORTS


def _ports(entry: str, text: str) -> frozenset[int] | None:
    if text == "*":
        return ANY_PORT
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"allowlist entry {entry!r}: port must be 1-65535 or *")
    return frozenset({int(text)})


class Allowlist:
    """Hosts, addresses and ports let through despite the guard (e.g. loopback in tests).

    Without an entry only ports 80 and 443 are reached, and only on public
    addresses. An entry lets its host or network through the address check,
    on 80/443 or on the port it names (``*``: any port); ``*:PORT`` admits
    another port on public addresses.
    """

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.entries = [parse_entry(e) for e in entries if e.strip()]

    def listed(self, host: str, address: IPAddress | None) -> list[AllowEntry]:
        return [e for e in self.entries if e.matches(host, address)]

    def allows(self, host: str, address: IPAddress, port: int) -> bool:
        return any(e.admits(port) for e in self.listed(host, address))

    def allows_public_port(self, port: int) -> bool:
        return port in DEFAULT_PORTS or any(
            e.host is None and e.network is None and e.admits(port) for e in self.entries
        )


def _norm_host(host: str) -> str:
    return host.lower().rstrip(".")


_HOSTNAME = re.compile(r"(?=.{1,253}\.?$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.?)+", re.I)


def _ends_in_number(host: str) -> bool:
    """WHATWG URL rule: a host whose last label is numeric is parsed as an IPv4 address.

    Browsers and some resolvers read ``2130706434``, ``0x7f.1``, ``017700000002``
    and ``127.2`` as 127.0.0.2; any such host that is not canonical dotted-quad
    is refused outright rather than second-guessing how it would resolve.
    """
    labels = host.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()
    last = labels[-1].lower()
    if last.isascii() and last.isdigit():
        return True
    return last.startswith("0x") and all(c in string.hexdigits for c in last[2:])


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """The IPv4 addresses an IPv6 address carries (mapped, 6to4, Teredo, NAT64)."""
    found: list[tuple[str, ipaddress.IPv4Address]] = []
    if address.ipv4_mapped is not None:
        found.append(("IPv4-mapped", address.ipv4_mapped))
    if address.sixtofour is not None:
        found.append(("6to4", address.sixtofour))
    if address.teredo is not None:
        server, client = address.teredo
        found += [("Teredo server", server), ("Teredo client", client)]
    if address in _NAT64:
        found.append(("NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)))
    return found


def refusal_reason(address: IPAddress) -> str | None:
    """Why ``address`` must not be reached, or None when it is a public address.

    6to4 (2002::/16) and Teredo (2001::/32) are tunnels into IPv4 that no
    storage needs: refused whatever they embed. An IPv4-mapped or NAT64
    address is judged by the IPv4 address inside it.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = embedded_ipv4(address)
        for kind, inner in embedded:
            inner_reason = refusal_reason(inner)
            if inner_reason is not None:
                return f"{inner_reason} ({kind}, embedding {inner})"
        if address in _6TO4:
            return "a 6to4 tunnel address"
        if address in _TEREDO:
            return "a Teredo tunnel address"
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


def check_address(host: str, address: str, allowlist: Allowlist, port: int) -> None:
    """Raise BlockedAddressError unless ``address`` (resolved from ``host``) may be reached."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if allowlist.allows(host, ip, port):
        return
    if allowlist.listed(host, ip):
        raise BlockedAddressError(
            f"refusing to fetch from {host}: port {port} is not allowlisted for it"
        )
    reason = refusal_reason(ip)
    if reason is not None:
        raise BlockedAddressError(f"refusing to fetch from {host}: it resolves to {reason}")
    if not allowlist.allows_public_port(port):
        raise BlockedAddressError(
            f"refusing to fetch from {host}: port {port} is not 80 or 443 and not allowlisted"
        )


def check_host(host: str, port: int, allowlist: Allowlist) -> None:
    """Check a URL's host before any request.

    An IP literal is checked here (aiohttp skips the resolver for those); a
    numeric host that is not a canonical IP literal is refused; a DNS name
    is left to the resolver, which checks every answer and the port.
    """
    bare = host.strip("[]")
    if _is_ip(bare):
        check_address(host, bare, allowlist, port)
    elif _ends_in_number(bare):
        raise BlockedAddressError(
            f"refusing to fetch from {host!r}: a numeric host that is not a canonical"
            " IP address (decimal, octal, hex and short forms are refused)"
        )
    elif not _HOSTNAME.fullmatch(bare):
        raise BlockedAddressError(f"refusing to fetch from {host!r}: not a valid host name")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


class GuardedResolver(AbstractResolver):
    """A resolver that drops nothing silently: any refused answer fails the request."""

    def __init__(self, allowlist: Allowlist, inner: AbstractResolver | None = None) -> None:
        self._allowlist = allowlist
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        check_host(host, port, self._allowlist)
        results = await self._inner.resolve(host, port, family)
        for result in results:
            check_address(host, result["host"], self._allowlist, port)
        return results

    async def close(self) -> None:
        await self._inner.close()


def guarded_connector_kwargs(allowlist: Allowlist) -> dict[str, Any]:
    """Keyword arguments for ``aiohttp.TCPConnector`` that enforce the guard."""
    return {"resolver": GuardedResolver(allowlist), "use_dns_cache": False}
