"""Address, host and port classification is tested as pure functions: no packet is sent."""

from __future__ import annotations

import ipaddress

import pytest

from handlers.assets.netguard import (
    Allowlist,
    BlockedAddressError,
    check_address,
    check_host,
    parse_entry,
    refusal_reason,
)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.0.0.2",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "169.254.1.1",
        "0.0.0.0",
        "100.64.0.1",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "fd00:ec2::254",
        "100.100.100.200",
        "::127.0.0.1",  # IPv4-compatible (deprecated)
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    ],
)
def test_internal_addresses_are_refused(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("2002:7f00:1::", "loopback address (6to4, embedding 127.0.0.1)"),
        ("2002:a9fe:a9fe::", "metadata address (6to4, embedding 169.254.169.254)"),
        ("2002:5db8:d822::1", "6to4 tunnel"),  # embeds a public address: still a tunnel
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "Teredo client, embedding 127.0.0.1"),
        ("64:ff9b::7f00:1", "loopback address (NAT64, embedding 127.0.0.1)"),
    ],
)
def test_tunnel_addresses_are_refused_naming_what_they_embed(address: str, says: str) -> None:
    assert says in (refusal_reason(ipaddress.ip_address(address)) or "")


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None


def test_metadata_is_named_as_such() -> None:
    assert "metadata" in (refusal_reason(ipaddress.ip_address("169.254.169.254")) or "")


def test_allowlist_by_address_and_by_host() -> None:
    allow = Allowlist(["127.0.0.1", "files.internal", "10.9.0.0/16"])
    check_address("x", "127.0.0.1", allow, 80)
    check_address("files.internal", "10.1.1.1", allow, 443)
    check_address("y", "10.9.3.4", allow, 443)
    with pytest.raises(BlockedAddressError, match="loopback"):
        check_address("z", "127.0.0.2", allow, 80)
    with pytest.raises(BlockedAddressError, match="private"):
        check_address("z", "10.1.1.1", allow, 443)


@pytest.mark.parametrize(
    "host",
    [
        "2130706434",  # 127.0.0.2 as one decimal number
        "017700000002",  # ... in octal
        "0x7f000002",  # ... in hex
        "0x7f.0.0.2",
        "0177.0.0.02",
        "127.2",  # short form
        "127.0.2",
        "127.0.0.1.",  # trailing dot
        "1.2.3.4.5",
        "8.8.8.010",  # a public address in a non-canonical form is refused too
        "www.example.123",
    ],
)
def test_non_canonical_numeric_hosts_are_refused(host: str) -> None:
    allow_everything = Allowlist(["0.0.0.0/0:*", "[::/0]:*"])
    with pytest.raises(BlockedAddressError, match="numeric host"):
        check_host(host, 80, allow_everything)


@pytest.mark.parametrize("host", ["a b", "exa\x00mple", "-bad-.example", "x" * 300])
def test_hosts_that_are_not_host_names_are_refused(host: str) -> None:
    with pytest.raises(BlockedAddressError, match="not a valid host name"):
        check_host(host, 443, Allowlist())


@pytest.mark.parametrize("host", ["files.example.com", "s3.eu-west-1.amazonaws.com", "x1"])
def test_host_names_are_left_to_the_resolver(host: str) -> None:
    check_host(host, 443, Allowlist())


def test_canonical_literals_are_checked_as_addresses() -> None:
    check_host("93.184.216.34", 443, Allowlist())
    with pytest.raises(BlockedAddressError, match="loopback"):
        check_host("127.0.0.1", 80, Allowlist())
    with pytest.raises(BlockedAddressError, match="6to4"):
        check_host("[2002:7f00:1::]", 80, Allowlist())


def test_only_ports_80_and_443_without_an_allowlist_entry() -> None:
    none = Allowlist()
    check_address("files.example.com", "93.184.216.34", none, 80)
    check_address("files.example.com", "93.184.216.34", none, 443)
    for port in (22, 25, 6379, 8080):
        with pytest.raises(BlockedAddressError, match=f"port {port} is not 80 or 443"):
            check_address("files.example.com", "93.184.216.34", none, port)


def test_an_entry_admits_its_port_or_every_port() -> None:
    allow = Allowlist(
        ["127.0.0.1:9000", "files.internal:*", "10.9.0.0/16:8080", "[::1]:*", "*:8443"]
    )
    check_address("a", "127.0.0.1", allow, 9000)
    with pytest.raises(BlockedAddressError, match="port 9001 is not allowlisted"):
        check_address("a", "127.0.0.1", allow, 9001)
    check_address("files.internal", "10.1.1.1", allow, 12345)
    check_address("b", "10.9.0.7", allow, 8080)
    with pytest.raises(BlockedAddressError, match="port 443 is not allowlisted"):
        check_address("b", "10.9.0.7", allow, 443)
    check_address("c", "::1", allow, 1)
    check_address("public", "93.184.216.34", allow, 8443)  # *:8443, public addresses only
    with pytest.raises(BlockedAddressError, match="loopback"):
        check_address("d", "127.0.0.2", allow, 8443)


def test_a_bare_entry_admits_the_default_ports_only() -> None:
    allow = Allowlist(["127.0.0.1"])
    check_address("a", "127.0.0.1", allow, 443)
    with pytest.raises(BlockedAddressError, match="port 8000 is not allowlisted"):
        check_address("a", "127.0.0.1", allow, 8000)


@pytest.mark.parametrize(
    "entry",
    ["", "*", "*:*", "host:0", "host:99999", "host:http", "[::1", "[::1]x", "2130706434", "a b"],
)
def test_malformed_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        parse_entry(entry)
