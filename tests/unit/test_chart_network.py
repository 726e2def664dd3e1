"""The chart's NetworkPolicy: what it lets out, checked as pure address arithmetic.

No packet is sent: each address is classified against the rendered ipBlocks.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from streams.settings import Settings
from tests.support import chart

FULL = chart.CHART / "ci" / "full-values.yaml"


# --- NetworkPolicy ---------------------------------------------------------------------------

MUST_NOT_REACH = [
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "127.0.0.1",
    "fd00::1",
    "fe80::1",
    "::1",
    "::ffff:10.0.0.1",
]


def _allowed(rule: dict[str, Any], address: str) -> bool:
    """Whether an egress rule's ipBlocks let ``address`` through (pure, no packet sent)."""
    ip = ipaddress.ip_address(address)
    for peer in rule["to"]:
        block = peer.get("ipBlock")
        if not block:
            continue
        cidr = ipaddress.ip_network(block["cidr"])
        if ip.version == cidr.version and ip in cidr:
            excepted = [ipaddress.ip_network(e) for e in block.get("except", [])]
            if not any(ip in e for e in excepted):
                return True
    return False


def test_network_policy_lets_out_only_dns_kafka_postgres_and_the_public_internet() -> None:
    docs = chart.render(files=[FULL])
    policy = chart.one(docs, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "conveyor",
        "app.kubernetes.io/instance": "conveyor",
    }
    port, console = Settings().worker.metrics_port, Settings().console.port
    assert [rule["ports"] for rule in policy["ingress"]] == [
        [{"port": port, "protocol": "TCP"}],
        [{"port": console, "protocol": "TCP"}],  # the console's, from its ingress controller
    ]
    assert policy["ingress"][1]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ingress-nginx"
    }
    dns, kafka, postgres, internet, extra = policy["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert kafka["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    assert kafka["ports"] == [{"port": 9092, "protocol": "TCP"}, {"port": 9093, "protocol": "TCP"}]
    assert postgres["ports"] == [{"port": 5432, "protocol": "TCP"}]
    assert {p["port"] for p in internet["ports"]} == {80, 443}
    for address in MUST_NOT_REACH:
        assert not _allowed(internet, address), address
    for address in ("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"):
        assert _allowed(internet, address), address
    for block in (p["ipBlock"] for p in internet["to"]):
        cidr = ipaddress.ip_network(block["cidr"])
        assert all(ipaddress.ip_network(e).subnet_of(cidr) for e in block["except"])  # type: ignore[arg-type]
    assert extra["ports"] == [{"port": 8080, "protocol": "TCP"}]


def test_the_network_policy_is_on_by_default_and_lets_out_only_dns_kafka_postgres_and_443() -> None:
    """Issue 19: on without any value set; egress by port where Kafka's and Postgres's
    addresses are not given; metrics reachable from the monitoring namespace only."""
    policy = chart.one(chart.render(chart.SECRET), "NetworkPolicy")["spec"]
    dns, kafka, postgres, internet = policy["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert "to" not in kafka and kafka["ports"] == [{"port": 9092, "protocol": "TCP"}]
    assert "to" not in postgres and postgres["ports"] == [{"port": 5432, "protocol": "TCP"}]
    assert internet["ports"] == [{"port": 443, "protocol": "TCP"}]
    for address in MUST_NOT_REACH:
        assert not _allowed(internet, address), address
    [ingress] = policy["ingress"]
    assert ingress["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    opened = {**chart.SECRET, "networkPolicy": {"metricsFrom": [{"namespaceSelector": {}}]}}
    [wider] = chart.one(chart.render(opened), "NetworkPolicy")["spec"]["ingress"]
    assert wider["from"] == [{"namespaceSelector": {}}]
    named = {**chart.SECRET, "networkPolicy": {"monitoringNamespace": "observability"}}
    [other] = chart.one(chart.render(named), "NetworkPolicy")["spec"]["ingress"]
    assert other["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "observability"
    }
    off = {**chart.SECRET, "networkPolicy": {"enabled": False}}
    assert not [d for d in chart.render(off) if d["kind"] == "NetworkPolicy"]


def test_a_provider_on_another_port_is_let_out_on_it() -> None:
    values = {
        **chart.SECRET,
        "config": {"llm": {"base_url": "https://llm.example.com:8443/v1"}},
    }
    internet = chart.one(chart.render(values), "NetworkPolicy")["spec"]["egress"][3]
    assert [p["port"] for p in internet["ports"]] == [443, 8443]
