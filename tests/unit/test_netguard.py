"""Address classification is tested as a pure function: no packet is sent."""

from __future__ import annotations

import ipaddress

import pytest

from handlers.assets.netguard import Allowlist, BlockedAddressError, check_address, refusal_reason


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
    ],
)
def test_internal_addresses_are_refused(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None


def test_metadata_is_named_as_such() -> None:
    assert "metadata" in (refusal_reason(ipaddress.ip_address("169.254.169.254")) or "")


def test_allowlist_by_address_and_by_host() -> None:
    allow = Allowlist(["127.0.0.1", "files.internal", "10.9.0.0/16"])
    check_address("x", "127.0.0.1", allow)
    check_address("files.internal", "10.1.1.1", allow)
    check_address("y", "10.9.3.4", allow)
    with pytest.raises(BlockedAddressError, match="loopback"):
        check_address("z", "127.0.0.2", allow)
    with pytest.raises(BlockedAddressError, match="private"):
        check_address("z", "10.1.1.1", allow)
